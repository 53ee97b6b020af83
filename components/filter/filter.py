"""The filter step: score every clip, then build the data pyramid (`docs/curation.md`, "Filter").

    table (path,text,num_frames,height,width,aspect_ratio,resolution,fps,...) ──> scorers (parallel over clips)
        ──> full.parquet       every clip, its scores, `rejected_by` (first failing stage) and `reason`
        ──> set_256px.parquet  the looser set, training-ready (raw text; the dataset adds the fps + motion suffix)
        ──> set_768px.parquet  the stricter set (a subset of the 256px set by construction)
        ──> needs_caption.parquet  clips that passed but have no caption, for a captioner step
        ──> stats.json         counts per stage and level, thresholds, validation summary

Open-Sora 2.0's numeric thresholds are not public (Open-Sora#829); every threshold here is a recorded
parameter (`FilterThresholds`), and `stats.json` keeps them next to the kept/rejected counts. Lineage:
Open-Sora v1.3 `docs/data_processing.md`.

The new dataset is written to a temporary folder next to `out_dir`, validated, and only then swapped in;
a failed validation leaves the previous good dataset untouched.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soraflow.common.atomic import write_text_atomic
from soraflow.common.clip_table import FULL_FILE, NEEDS_CAPTION_FILE, SET_FILES, read_table, write_table
from soraflow.common.digests import table_record
from soraflow.common.video_io import VideoReadError, check_video_backend
from soraflow.components.filter.scorers import Clip, Scorer, default_scorers, find_duplicates

__all__ = ["FilterError", "FilterThresholds", "FilterResult", "run_filter", "THRESHOLDS_256", "THRESHOLDS_768"]

STAGE_ORDER = ["decode", "blur", "motion", "jitter", "aesthetic", "ocr", "size", "dedup"]


class FilterError(RuntimeError):
    """The filter as a whole cannot produce a dataset; the message says why."""


@dataclass(frozen=True)
class FilterThresholds:
    """One pyramid level. `None` disables a check. The paper gives none of these numbers except OCR's box
    confidence (in `OCRScorer`); the defaults are this project's choices, tuned on synthetic clips."""

    motion_min: float | None = 0.3  # VMAF motion: drop nearly static clips ...
    motion_max: float | None = 40.0  # ... and extreme motion
    blur_min: float | None = 20.0  # median Laplacian variance below this → blurry (majority vote of 5 frames)
    jitter_max: float | None = 5.0  # mean |change of camera shift| per frame, % of short side
    aesthetic_min: float | None = 4.5  # LAION aesthetic (applied only when the scorer ran)
    ocr_max: float | None = 0.15  # fraction of the frame covered by confident text boxes
    min_short_side: int = 0  # clip short side (px) needed for this level
    min_num_frames: int = 1
    dup_max_hamming: int = 8  # pHash bits (summed over the sampled frames) for a near-duplicate


THRESHOLDS_256 = FilterThresholds()
# 576 px is the short side of the smallest 768px training bucket (16:9, 576x1024): a smaller clip would be
# upscaled to train at 768px, so it stays in the 256px set only.
THRESHOLDS_768 = FilterThresholds(motion_min=0.5, motion_max=30.0, blur_min=40.0, jitter_max=3.0,
                                  aesthetic_min=5.0, ocr_max=0.08, min_short_side=576)


def as_thresholds(value: FilterThresholds | dict, base: FilterThresholds, where: str) -> FilterThresholds:
    """`value` as thresholds: a FilterThresholds as is, or a mapping of changes to `base` (what JSON overrides
    and the CLI's key=value flags give). Unknown names and wrong types raise ValueError naming `where.key`."""
    if isinstance(value, FilterThresholds):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of threshold names to values, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(FilterThresholds)}
    changes = {}
    for key, v in value.items():
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            raise ValueError(f"{where}: unknown threshold {key!r}" + (f" (did you mean {near[0]}?)" if near else "")
                             + f"; thresholds: {', '.join(fields)}")
        integral = key in ("min_short_side", "min_num_frames", "dup_max_hamming")
        ok = (isinstance(v, int) and not isinstance(v, bool)) if integral else (
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
        if not ok:
            raise ValueError(f"{where}.{key}: expected {'an integer' if integral else 'a number or null'}, "
                             f"got {v!r}")
        changes[key] = v
    return dataclasses.replace(base, **changes)


@dataclass
class FilterResult:
    out_dir: Path
    full: pd.DataFrame
    set_256: pd.DataFrame
    set_768: pd.DataFrame
    needs_caption: pd.DataFrame
    counts: dict[str, Any]
    validation: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _write_json(obj, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def _score_clip(path: str, num_frames, scorers: list[Scorer]) -> dict[str, Any]:
    """All scorers on one clip; a decode failure stops the rest (their columns stay NaN)."""
    row: dict[str, Any] = {}
    try:
        n = int(num_frames) if num_frames is not None and not pd.isna(num_frames) else None
    except (TypeError, ValueError):
        n = None
    clip = Clip(path, n)
    # one decoding pass serves every scorer: it keeps the RGB frames they declared and feeds all luma to
    # VMAF motion (a read error is kept on the clip and reported by the decode stage)
    try:
        wanted = sorted({i for sc in scorers for i in sc.frame_indices(clip)})
        clip.decode_once(wanted, motion=any(sc.needs_motion for sc in scorers))
    except VideoReadError as exc:  # the probe for a missing frame count failed
        clip.decode_error = exc
    for sc in scorers:
        res = sc(clip)
        row.update(res.values)
        row[f"status_{sc.name}"] = res.status
        row[f"note_{sc.name}"] = res.reason
        if sc.name == "decode" and res.status != "ok":
            for later in scorers[scorers.index(sc) + 1:]:
                row.update({k: np.nan for k in later.writes})
                row[f"status_{later.name}"] = "not_run"
                row[f"note_{later.name}"] = "clip did not decode"
            break
    row["decoded_frames"] = clip.num_frames if row.get("status_decode") == "ok" else np.nan
    return row


def _fmt(x) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _check(row: pd.Series, t: FilterThresholds) -> tuple[str | None, str]:
    """First failing stage (in STAGE_ORDER) and a readable reason, or (None, "")."""
    if row.get("status_decode") != "ok":
        return "decode", str(row.get("note_decode") or "clip did not decode")
    for stage, col, lo, hi in (
        ("blur", "score_blur", t.blur_min, None),
        ("motion", "score_vmafmotion", t.motion_min, t.motion_max),
        ("jitter", "score_jitter", None, t.jitter_max),
        ("aesthetic", "score_aesthetic", t.aesthetic_min, None),
        ("ocr", "score_ocr", None, t.ocr_max),
    ):
        status = row.get(f"status_{stage}")
        if status == "not_run":
            continue  # pluggable scorer without weights: recorded, never faked, not a rejection
        if status != "ok":
            return stage, str(row.get(f"note_{stage}") or f"{stage} scorer failed")
        v = float(row[col])
        if lo is not None and v < lo:
            return stage, f"{col}={_fmt(v)} < {stage} min {lo}"
        if hi is not None and v > hi:
            return stage, f"{col}={_fmt(v)} > {stage} max {hi}"
    short = min(int(row["height"]), int(row["width"]))
    if short < t.min_short_side:
        return "size", f"short side {short}px < {t.min_short_side}px"
    if int(row["decoded_frames"]) < t.min_num_frames:
        return "size", f"{int(row['decoded_frames'])} frames < {t.min_num_frames}"
    return None, ""


def _has_caption(text) -> bool:
    return isinstance(text, str) and text.strip() != "" and text.strip().lower() != "nan"


def _training_set(df: pd.DataFrame) -> pd.DataFrame:
    # The raw caption, next to its `fps` and `score_vmafmotion`: the training dataset appends the FPS / motion
    # suffix (once) when it reads the row, as the released dataset does.
    out = df.copy()
    out["text"] = pd.Series([str(t).strip() for t in out["text"]], index=out.index, dtype=object)
    out["caption"] = out["text"]
    return out.reset_index(drop=True)


def run_filter(
    table: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    thresholds_256: FilterThresholds | dict = THRESHOLDS_256,
    thresholds_768: FilterThresholds | dict = THRESHOLDS_768,
    scorers: list[Scorer] | None = None,
    aesthetic_weights: str | None = None,
    ocr_weights: str | None = None,
    num_workers: int = 2,
    progress: bool = True,
    validate: bool = True,
    check_files: bool = True,
    report_dir: str | Path | None = None,
) -> FilterResult:
    """Score, threshold and write the pyramid to `out_dir` (swapped in only after validation passes).

    Raises `soraflow.components.filter.validation.ValidationError` (the previous `out_dir` untouched, the report saved
    under `report_dir`, default `<out_dir>.reports/`) when an output table fails its suite, and `ValueError`
    when the input table lacks a required column.
    """
    t0 = time.time()
    thresholds_256 = as_thresholds(thresholds_256, THRESHOLDS_256, "thresholds_256")
    thresholds_768 = as_thresholds(thresholds_768, THRESHOLDS_768, "thresholds_768")
    _check_environment()
    table_path = None
    if not isinstance(table, pd.DataFrame):
        table_path = Path(table)
        table = read_table(table)
    df = _input_rows(table)
    out_dir = Path(out_dir)
    report_dir = Path(report_dir) if report_dir else out_dir.parent / f"{out_dir.name}.reports"
    scorers = scorers if scorers is not None else default_scorers(aesthetic_weights, ocr_weights)
    if validate:  # the GX import overlaps the scoring below (decoding and numpy release the GIL)
        from soraflow.components.filter.validation import preload_engine

        preload_engine()
    _score_all(df, scorers, num_workers, progress)
    _apply_thresholds(df, thresholds_256, thresholds_768)
    needs_caption = df[df["in_256"] & ~df["has_caption"]].reset_index(drop=True)
    set_256 = _training_set(df[df["in_256"] & df["has_caption"]])
    set_768 = _training_set(df[df["in_768"] & df["has_caption"]])
    counts = _counts(df, set_256, set_768, needs_caption, scorers)
    stats = {"counts": counts, "thresholds_256": asdict(thresholds_256), "thresholds_768": asdict(thresholds_768),
             "scorers": [{"stage": s.name, "class": type(s).__name__, "reads": list(s.reads),
                          "writes": list(s.writes), "config": {k: v for k, v in vars(s).items()
                                                               if not k.startswith("_") and not callable(v)}}
                         for s in scorers]}
    tables = {"full": (df, FULL_FILE), "set_256px": (set_256, SET_FILES["set_256px"]),
              "set_768px": (set_768, SET_FILES["set_768px"]), "needs_caption": (needs_caption, NEEDS_CAPTION_FILE)}
    files, validation = _write_dataset(out_dir, tables, stats, table_path, validate=validate,
                                       check_files=check_files, report_dir=report_dir)
    return FilterResult(out_dir=out_dir, full=df, set_256=set_256, set_768=set_768, needs_caption=needs_caption,
                        counts=counts, validation=validation, files=files, seconds=time.time() - t0)


def _check_environment() -> None:
    """What every clip needs, checked once: a missing library is one error here, not every clip "broken"."""
    check_video_backend(encode=False)
    try:
        import cv2  # noqa: F401  (blur, jitter and pHash scorers)
    except ImportError as exc:
        raise FilterError(f"the filter needs OpenCV (blur, jitter, pHash): {exc}; install the project's "
                          f"dependencies (`pip install -e .`, which pins opencv-python-headless)") from None


def _input_rows(table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("path", "text", "fps", "height", "width") if c not in table.columns]
    if missing:
        raise ValueError(f"clip table lacks required column(s) {missing}; has {list(table.columns)}")
    if table.empty:
        raise ValueError("the clip table has no rows: nothing to filter (did ingest reject every source? see its "
                         "rejected.parquet)")
    df = table.reset_index(drop=True).copy()
    df["path"] = df["path"].astype(str)
    return df


def _score_all(df: pd.DataFrame, scorers: list[Scorer], num_workers: int, progress: bool) -> None:
    """Every scorer on every clip (clips in parallel), the score columns added to `df` in place."""
    nf = df["num_frames"] if "num_frames" in df.columns else pd.Series([None] * len(df))
    rows: list[dict[str, Any]] = [{}] * len(df)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(df), desc="filter: scoring clips", unit="clip")
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futs = {pool.submit(_score_clip, p, n, scorers): i for i, (p, n) in enumerate(zip(df["path"], nf))}
        for fut, i in futs.items():
            rows[i] = fut.result()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    scores = pd.DataFrame(rows, index=df.index)
    for col in scores.columns:
        df[col] = scores[col]


def _apply_thresholds(df: pd.DataFrame, thresholds_256: FilterThresholds, thresholds_768: FilterThresholds) -> None:
    """The verdict columns (`rejected_by`, `reason`, `dup_of`, `in_256`, `in_768`, ... `has_caption`), in place;
    a FilterError when one stage rejected every clip (a broken scorer or setting, not a dataset)."""
    r256 = [_check(r, thresholds_256) for _, r in df.iterrows()]
    r768 = [_check(r, thresholds_768) for _, r in df.iterrows()]
    # dedup last: among the clips that pass every other 256px check, the first in table order is kept and
    # later near-copies point at it (`dup_of`), so a rejected clip never "uses up" its duplicate's place
    hashes = list(df["phash"]) if "phash" in df.columns else [None] * len(df)
    survivors = [h if s is None else None for h, (s, _) in zip(hashes, r256)]
    df["dup_of"] = find_duplicates(list(df["path"]), survivors, thresholds_256.dup_max_hamming)
    for i, dup in enumerate(df["dup_of"]):
        if isinstance(dup, str):
            why = f"near-duplicate of {dup} (pHash distance <= {thresholds_256.dup_max_hamming} bits)"
            r256[i] = ("dedup", why)
    df["rejected_by"] = [s for s, _ in r256]
    df["reason"] = [m for _, m in r256]
    df["in_256"] = df["rejected_by"].isna()
    df["rejected_by_768"] = [s768 if ok else "256px" for (s768, _), ok in zip(r768, df["in_256"])]
    df["reason_768"] = [m768 if ok else f"not in the 256px set ({m})"
                        for (_, m768), ok, m in zip(r768, df["in_256"], df["reason"])]
    df["in_768"] = df["in_256"] & df["rejected_by_768"].isna()
    df["has_caption"] = [_has_caption(t) for t in df["text"]]
    if not df["in_256"].any() and df["rejected_by"].nunique() == 1:
        stage = df["rejected_by"].iloc[0]
        raise FilterError(f"every one of the {len(df)} clips was rejected by the {stage!r} stage (first: "
                          f"{df['path'].iloc[0]}: {df['reason'].iloc[0]}); nothing was written")


def _counts(df, set_256, set_768, needs_caption, scorers) -> dict[str, Any]:
    def per_stage(col):
        vc = df[col].value_counts()
        return {s: int(vc.get(s, 0)) for s in STAGE_ORDER + ["256px"] if int(vc.get(s, 0))}

    return {
        "input": int(len(df)),
        "rejected_256": per_stage("rejected_by"),
        "rejected_768": per_stage("rejected_by_768"),
        "kept_256": int(df["in_256"].sum()),
        "kept_768": int(df["in_768"].sum()),
        "set_256_rows": int(len(set_256)),
        "set_768_rows": int(len(set_768)),
        "needs_caption": int(len(needs_caption)),
        "not_run": {s.name: int((df.get(f"status_{s.name}") == "not_run").sum()) for s in scorers
                    if f"status_{s.name}" in df.columns},
        "scorer_errors": {s.name: int((df.get(f"status_{s.name}") == "error").sum()) for s in scorers
                          if f"status_{s.name}" in df.columns},
    }


def _validate(tables: dict, tmp: Path, *, check_files: bool, report_dir: Path) -> dict[str, Any]:
    """Both training sets through their suites; the reports go to `tmp/validation/`, and a failing one also to
    `report_dir` (the temporary folder is deleted on failure) before ValidationError is raised."""
    from soraflow.components.filter.validation import ValidationError, covered_report, save_report, validate_table

    set_256, set_768 = tables["set_256px"][0], tables["set_768px"][0]
    reports = {"set_256px": validate_table(set_256, "set_256px", check_files=check_files, raise_on_failure=False)}
    # the 768px set is a row subset of the 256px set: its report follows from the 256px one when that
    # is verifiably so, else it gets its own full run
    reports["set_768px"] = (covered_report(set_768, "set_768px", set_256, reports["set_256px"])
                            or validate_table(set_768, "set_768px", check_files=check_files, raise_on_failure=False))
    failed = next((r for r in reports.values() if not r["success"]), None)
    vdir = tmp / "validation"
    vdir.mkdir()
    for name, rep in reports.items():
        save_report(rep, vdir / name)
    if failed is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        raise ValidationError(failed, save_report(failed, report_dir / failed["name"]))
    return {n: {"success": r["success"], "engine": r["engine"],
                "failed": [e["expectation"] for e in r["expectations"] if not e["success"]],
                **({"covered_by": r["covered_by"]} if "covered_by" in r else {})}
            for n, r in reports.items()}


def _write_dataset(out_dir: Path, tables: dict, stats: dict, table_path: Path | None, *, validate: bool,
                   check_files: bool, report_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the tables to a temporary sibling folder, validate, then swap it in for `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        files = {key: write_table(df, tmp / name) for key, (df, name) in tables.items()}
        validation = _validate(tables, tmp, check_files=check_files, report_dir=report_dir) if validate else {}
        stats["validation"] = validation
        # lineage: what this run read and wrote, by content (no timings here, so identical input gives a
        # byte-identical dataset and the same DVC hash); sha256 is the digest the trainer's data_revision hashes
        stats["input"] = (table_record(table_path, relative_to=table_path.parent) if table_path is not None
                          else {"table": "<DataFrame>"})
        stats["outputs"] = {k: table_record(v, relative_to=tmp) for k, v in files.items()}
        _write_json(stats, tmp / "stats.json")
        # swap: the old dataset moves aside only once the new one is complete and valid
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{int(time.time() * 1e6)}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {k: str(out_dir / Path(v).name) for k, v in files.items()}
    files["stats"] = str(out_dir / "stats.json")
    return files, validation
