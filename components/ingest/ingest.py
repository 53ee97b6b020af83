"""Ingest: raw videos -> probed, rule-checked, shot-split, cropped, re-encoded 2–8 s clips + a clip table
(`docs/curation.md`: the clip table, and ingest's rules).

Input is a folder of videos, a list of paths, or a manifest (CSV / Parquet / JSONL) with a `path` column (local path,
or an http(s)/s3/gs URL opened through fsspec) and an optional `text` (or `caption`) column.

Per source (in parallel, one failure never stops the batch):

1. fetch (URLs) and hash (sha256) the file; probe it with PyAV;
2. preprocessing rules (`docs/curation.md`): duration ≥ `min_duration`, bits-per-pixel ≥ `min_bpp`, fps ≥ `min_fps`,
   aspect ratio (height/width) in `ar_range`, not H.264 Constrained Baseline, not broken (every frame decodes);
3. one decoding pass (PyAV, in process: no ffmpeg binary) gives every frame's scene score (FFmpeg's `scdet`
   filter; a cut is a frame whose score ≥ `scene_threshold`) and non-black content box (rows/columns whose
   mean luma is above `crop_limit`, as cropdetect measures them);
4. as the frames arrive, shots > `clip_max` are split into `clip_max` pieces, pieces < `clip_min` dropped; each
   clip is re-encoded H.264 from the decoded frames, fps kept when ≤ `max_fps` (else divided down), long side
   ≤ `max_long_side`, cropped to the union of its frames' content boxes (black borders removed).

Outputs in `out_dir`: `clips/*.mp4`, `clips.parquet` (columns `path,text,num_frames,height,width,aspect_ratio,
resolution,fps` + provenance), `rejected.parquet` (`source,row,reason,detail`). Every file is written to a temp
name and renamed. A source is finished when its done-marker `.done/<key>.json` exists (written last, atomically);
the key covers the source's path, size, mtime and the ingest parameters, so a re-run skips finished sources and a
crash loses nothing already finished. Rejection reasons: `missing`, `bad_row`, `download`, `broken`, `duration`,
`bpp`, `fps`, `aspect_ratio`, `constrained_baseline`, `no_clips`, `error`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import pandas as pd

from soraflow.common.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from soraflow.common.clip_table import PROVENANCE_COLUMNS, REQUIRED_COLUMNS, read_table, write_table
from soraflow.common.digests import file_sha256, table_record

from soraflow.common.video_io import VideoReadError, check_video_backend, probe_video, scan_frames, write_clip

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
REJECTED_COLUMNS = ["source", "row", "reason", "detail"]
_STANDARD_FPS = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                 Fraction(50), Fraction(60000, 1001), Fraction(60), Fraction(12), Fraction(15), Fraction(16),
                 Fraction(20)]


class IngestError(RuntimeError):
    """Ingest as a whole cannot produce a clip table; the message says why."""


@dataclass(frozen=True)
class IngestParams:
    min_duration: float = 2.0
    min_bpp: float = 0.02
    min_fps: float = 16.0
    ar_range: tuple = (1 / 3, 3.0)
    clip_min: float = 2.0
    clip_max: float = 8.0
    max_fps: float = 30.0
    max_long_side: int = 1080
    scene_threshold: float = 15.0
    crop_limit: int = 24
    crf: int = 18

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class IngestResult:
    clips_path: Path
    rejected_path: Path
    clips: pd.DataFrame
    rejected: pd.DataFrame
    processed: int = 0  # sources worked on in this run
    skipped: int = 0  # sources already done by an earlier run
    counts: dict = field(default_factory=dict)  # rejections by reason
    seconds: float = 0.0


# --- inputs ---------------------------------------------------------------------------------------------------------

def _is_url(p: str) -> bool:
    return "://" in p and p.split("://", 1)[0].lower() in {"http", "https", "s3", "gs", "gcs", "file", "memory"}


def read_inputs(inputs) -> list[dict]:
    """Normalise `inputs` to rows `{row, source, text, error}`; a manifest without a `path` column is a ValueError
    naming the file; a bad row becomes a row with `error` set (rejected later, naming the row)."""
    if isinstance(inputs, (list, tuple)):
        return [{"row": i, "source": str(p), "text": "", "error": None} for i, p in enumerate(inputs)]
    p = Path(inputs)
    if not p.exists():
        raise FileNotFoundError(f"ingest input {p} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
        return [{"row": i, "source": str(f.resolve()), "text": "", "error": None} for i, f in enumerate(files)]
    df = read_table(p, strings=True)
    if "path" not in df.columns:
        raise ValueError(f"{p}: manifest has no 'path' column (columns: {', '.join(map(str, df.columns))})")
    text_col = "text" if "text" in df.columns else ("caption" if "caption" in df.columns else None)
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        raw = rec.get("path")
        text = rec.get(text_col) if text_col else ""
        text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or not str(raw).strip():
            rows.append({"row": i, "source": "", "text": text, "error": f"{p}: row {i}: empty 'path'"})
            continue
        src = str(raw).strip()
        if not _is_url(src) and not os.path.isabs(src):
            src = str((p.parent / src).resolve())
        rows.append({"row": i, "source": src, "text": text, "error": None})
    return rows


def manifest_digest(inputs) -> str:
    """What the raw input is, by content: the md5 of a manifest's bytes (local or a URL, through fsspec), or for
    a folder a sha256 over its videos' relative paths, sizes and mtimes. The pipeline passes it to ingest as a
    parameter, so KFP's cache key changes when a manifest is rewritten at the same path."""
    import fsspec

    p = str(inputs)
    if not _is_url(p) and Path(p).is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in Path(p).rglob("*") if q.is_file() and q.suffix.lower() in VIDEO_EXTS):
            st = f.stat()
            h.update(f"{f.relative_to(p).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()
    md5 = hashlib.md5()
    with fsspec.open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
    return "md5:" + md5.hexdigest()


def verify_manifest(inputs, digest: str) -> None:
    """Refuse to ingest an input that is no longer what the run was submitted with (a cached or retried step
    would otherwise mix two versions of the data)."""
    if digest and manifest_digest(inputs) != digest:
        raise IngestError(f"{inputs}: its content changed since this run was submitted (digest {digest}, now "
                          f"{manifest_digest(inputs)}); submit a new run for the new input")


def _source_key(source: str, params: IngestParams) -> str | None:
    if _is_url(source):
        ident = source
    else:
        try:
            st = os.stat(source)
        except OSError:
            return None
        ident = f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(f"{ident}|{params.key()}".encode()).hexdigest()


# --- small helpers --------------------------------------------------------------------------------------------------

def _fetch(url: str, cache: Path) -> str:
    import fsspec

    ext = os.path.splitext(url.split("?", 1)[0])[1] or ".mp4"
    dst = cache / (hashlib.sha1(url.encode()).hexdigest()[:20] + ext)
    if dst.exists():
        return str(dst)
    with atomic_path(dst) as tmp, open(tmp, "wb") as out, fsspec.open(url, "rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
    return str(dst)


def _output_fps(fps: float, max_fps: float) -> Fraction:
    f = Fraction(fps).limit_denominator(1001)
    near = min(_STANDARD_FPS, key=lambda s: abs(float(s) - fps))
    if abs(float(near) - fps) / float(near) < 0.01:  # VFR averages and rounding noise snap to a standard rate
        f = near
    if float(f) > max_fps:
        f = f / math.ceil(float(f) / max_fps)
    return f


def rule_violation(info, p: IngestParams) -> tuple[str, str] | None:
    """The first preprocessing rule (`docs/curation.md`) that `info` (a `VideoInfo`) breaks, as (reason, detail)."""
    if info.duration < p.min_duration:
        return "duration", f"duration {info.duration:.3f} s < {p.min_duration} s"
    if info.fps < p.min_fps:
        return "fps", f"fps {info.fps:.3f} < {p.min_fps}"
    ar = info.height / info.width if info.width else 0.0
    if not (p.ar_range[0] - 1e-9 <= ar <= p.ar_range[1] + 1e-9):
        return "aspect_ratio", f"aspect ratio (h/w) {ar:.3f} outside [{p.ar_range[0]:.3f}, {p.ar_range[1]:.3f}]"
    if info.codec == "h264" and (info.profile or "").lower() == "constrained baseline":
        return "constrained_baseline", "H.264 Constrained Baseline profile"
    bit_rate = info.bit_rate
    if not bit_rate and info.duration > 0:
        bit_rate = os.path.getsize(info.path) * 8 / info.duration
    bpp = (bit_rate or 0) / max(info.fps * info.width * info.height, 1)
    if bpp < p.min_bpp:
        return "bpp", f"bits per pixel {bpp:.4f} < {p.min_bpp}"
    return None


def clip_crop(boxes, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The crop (w, h, x, y) that keeps the union of the content boxes (x1, x2, y1, y2, inclusive) of a clip's
    frames, with even offsets and sizes inside the content; None when every frame is black."""
    boxes = [b for b in boxes if b[1] >= b[0] and b[3] >= b[2]]
    if not boxes:
        return None
    x1, x2 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    y1, y2 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    x1, y1 = x1 + (x1 % 2), y1 + (y1 % 2)  # even offsets, stay inside the content
    w, h = (x2 - x1 + 1) // 2 * 2, (y2 - y1 + 1) // 2 * 2
    if w <= 0 or h <= 0:
        return None
    return (w, h, x1, y1)


class ClipCutter:
    """Cuts one decoding pass into clips as the frames arrive, so a source is decoded once.

    A frame whose scene score is >= `scene_threshold` starts a new shot (never frame 0). Within a shot, clips
    are made greedily: a clip grows while its duration (from its first frame's time to the next frame's time)
    stays <= `clip_max`; clips shorter than `clip_min` are dropped. `on_clip(start_frame, end_frame, start_time,
    end_time, shot, frames, times, boxes)` is called for each kept clip (end exclusive). Only the frames of the
    clip being built are held, so memory is bounded by `clip_max` seconds of decoded frames."""

    def __init__(self, p: IngestParams, step: float, on_clip):
        self.p, self.step, self.on_clip = p, step, on_clip
        self.shot = 0
        self.buf: list = []  # ScannedFrames of the clip being built
        self.last_time: float | None = None

    def _close(self, end_time: float) -> None:
        buf, self.buf = self.buf, []
        if buf and end_time - buf[0].time >= self.p.clip_min - 1e-6:
            self.on_clip(buf[0].index, buf[-1].index + 1, buf[0].time, end_time, self.shot,
                         [f.frame for f in buf], [f.time for f in buf], [f.box for f in buf])

    def _fit(self, next_time: float) -> None:
        """Close the clip before its last frame if ending at `next_time` would make it longer than clip_max."""
        if len(self.buf) > 1 and next_time - self.buf[0].time > self.p.clip_max + 1e-6:
            last = self.buf.pop()
            self._close(last.time)
            self.buf = [last]

    def add(self, f) -> None:
        if self.buf:
            self._fit(f.time)
            if f.index > 0 and f.scene_score >= self.p.scene_threshold:
                self._close(f.time)
                self.shot += 1
        self.buf.append(f)
        self.last_time = f.time

    def finish(self) -> None:
        if self.buf:
            end = self.last_time + self.step
            self._fit(end)
            self._close(end)


# --- one source -----------------------------------------------------------------------------------------------------

def _reject(job, reason: str, detail: str) -> dict:
    return {"status": "rejected", "source": job["source"], "row": job["row"], "reason": reason, "detail": detail,
            "clips": []}


def _cut_and_encode(local: str, src: str, info, sha: str, job: dict, out: Path, p: IngestParams):
    """One decoding pass over `local`: scene scores and content boxes per frame, clips cut and re-encoded as
    the frames arrive. Clips go to a per-source folder first and move into `clips/` only when the whole
    source succeeded. Returns (clips, cuts) or a rejection dict."""
    out_fps = _output_fps(info.fps, p.max_fps)
    partial = out / "clips" / f".partial-{sha[:16]}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    clips, cuts = [], []
    black = 0

    def on_clip(start_frame, end_frame, start_time, end_time, shot, frames, times, boxes):
        nonlocal black
        crop = clip_crop(boxes, info.width, info.height)
        if crop is None:
            black += 1
            return  # an all-black clip
        if crop == (frames[0].width // 2 * 2, frames[0].height // 2 * 2, 0, 0):
            crop = None
        name = f"{sha[:16]}_{len(clips):03d}.mp4"
        n, h, w = write_clip(partial / name, frames, times, start_time, end_time, fps=out_fps, crop=crop,
                             max_long_side=p.max_long_side, crf=p.crf)
        if start_frame > 0:
            cuts.append(start_frame)
        clips.append({"path": str((out / "clips" / name).resolve()), "num_frames": n, "height": h, "width": w,
                      "aspect_ratio": h / w, "resolution": h * w, "fps": round(float(out_fps), 3), "source": src,
                      "source_row": job["row"], "source_sha256": sha, "shot": shot, "start_frame": start_frame,
                      "end_frame": end_frame, "start_time": start_time, "end_time": end_time,
                      "crop": "" if crop is None else "{}:{}:{}:{}".format(*crop)})

    try:
        step = 1.0 / info.fps if info.fps > 0 else 0.0
        cutter = ClipCutter(p, step, on_clip)
        n, error = 0, ""
        try:
            for f in scan_frames(local, crop_limit=p.crop_limit):
                cutter.add(f)
                n = f.index + 1
        except VideoReadError as exc:
            error = str(exc)
        expected = info.num_frames or 0
        if n == 0 or (error and n < 0.98 * expected) or n < 0.9 * expected:
            return _reject(job, "broken", f"{src}: {n} of {expected} frames decodable ({error or 'decode stopped early'})")
        cutter.finish()
        if not clips:
            if black:
                return _reject(job, "no_clips", f"{src}: every shot is black")
            return _reject(job, "no_clips", f"{src}: no shot of at least {p.clip_min} s")
        for c in clips:  # the source is complete: its clips take their final names
            os.replace(partial / Path(c["path"]).name, c["path"])
        return clips, cuts
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def process_source(job: dict, out_dir: str, p: IngestParams) -> dict:
    """Everything for one source; never raises (any failure is a rejection with its reason)."""
    out = Path(out_dir)
    src = job["source"]
    try:
        local = src
        if _is_url(src):
            try:
                local = _fetch(src, out / "downloads")
            except Exception as exc:
                return _reject(job, "download", f"row {job['row']}: {src}: download failed ({exc})")
        try:
            info = probe_video(local)
        except VideoReadError as exc:
            return _reject(job, "broken", str(exc))
        if not info.width or not info.height:
            return _reject(job, "broken", f"{src}: no frame size in the header")
        bad = rule_violation(info, p)
        if bad:
            return _reject(job, bad[0], f"{src}: {bad[1]}")
        sha = file_sha256(local)
        got = _cut_and_encode(local, src, info, sha, job, out, p)
        if isinstance(got, dict):
            return got
        clips, cuts = got
        return {"status": "ok", "source": src, "row": job["row"], "reason": "", "detail": "", "clips": clips,
                "cuts": cuts}
    except Exception as exc:  # never let one source stop the batch
        return _reject(job, "error", f"{src}: {type(exc).__name__}: {exc}")


# --- the batch ------------------------------------------------------------------------------------------------------

def _lineage(inputs, jobs: list[dict], clips_path: Path, rejected_path: Path) -> dict:
    """What this run read and wrote, by digest: the manifest file (md5 as DVC records it), every source's
    sha256 (one digest over the sorted list), and the two tables."""
    sources = sorted(f"{j['source']}" for j in jobs)
    record = {"input": {"sources": len(sources),
                        "sources_digest": hashlib.sha256("\n".join(sources).encode()).hexdigest()},
              "outputs": {p.name: table_record(p, relative_to=p.parent) for p in (clips_path, rejected_path)}}
    if isinstance(inputs, (str, Path)) and Path(inputs).is_file():
        record["input"]["manifest"] = table_record(inputs)
    return record


def _finished_or_rejected(jobs: list[dict], out: Path, params: IngestParams):
    """(results by row for the sources that need no work: bad rows, missing files, sources an earlier run
    finished; the (job, done-marker) pairs still to do; how many were finished before)."""
    results: dict[int, dict] = {}
    todo = []
    skipped = 0
    for job in jobs:
        if job["error"]:
            results[job["row"]] = _reject(job, "bad_row", job["error"])
            continue
        if not _is_url(job["source"]) and not os.path.exists(job["source"]):
            results[job["row"]] = _reject(job, "missing", f"row {job['row']}: {job['source']}: file does not exist")
            continue
        key = _source_key(job["source"], params)
        marker = out / ".done" / f"{key}.json"
        if marker.exists():
            try:
                results[job["row"]] = json.loads(marker.read_text(encoding="utf-8"))
                skipped += 1
                continue
            except (OSError, ValueError):
                pass  # a damaged marker: redo the source
        todo.append((job, marker))
    return results, todo, skipped


def _process_sources(todo, out: Path, params: IngestParams, workers: int, progress: bool, results: dict) -> None:
    """Every source of `todo`, in parallel; each result into `results` (by row) and, when final, its marker."""
    def run_one(job, marker):
        res = process_source(job, str(out), params)
        if res["reason"] not in ("download", "error"):  # a failed download or an unexpected error may pass next time
            write_bytes_atomic(marker, json.dumps(res).encode())
        return job, res

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="ingest", unit="video", disable=not progress or not todo)
    if workers <= 1 or len(todo) <= 1:
        for job, marker in todo:
            results[job["row"]] = run_one(job, marker)[1]
            bar.update(1)
    else:
        # Decoding, filtering and encoding run inside FFmpeg's libraries, which release the GIL: threads use
        # all the cores.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futs = [pool.submit(run_one, job, marker) for job, marker in todo]
            for fut in as_completed(futs):
                job, res = fut.result()
                results[job["row"]] = res
                bar.update(1)
    bar.close()


def _tables(jobs: list[dict], results: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the clip table, the rejected sources), rows in the input's order whatever order the workers finished in."""
    clip_rows, rej_rows = [], []
    for job in jobs:
        res = results[job["row"]]
        if res["status"] == "ok":
            for c in res["clips"]:
                clip_rows.append({**c, "text": job["text"], "source_row": job["row"]})
        else:
            rej_rows.append({"source": job["source"], "row": job["row"], "reason": res["reason"],
                             "detail": res["detail"]})
    clips = pd.DataFrame(clip_rows, columns=REQUIRED_COLUMNS + PROVENANCE_COLUMNS)
    clips = clips.astype({"path": str, "text": str, "num_frames": "int64", "height": "int64", "width": "int64",
                          "aspect_ratio": "float64", "resolution": "int64", "fps": "float64", "source": str,
                          "source_row": "int64", "source_sha256": str, "shot": "int64", "start_frame": "int64",
                          "end_frame": "int64", "start_time": "float64", "end_time": "float64", "crop": str})
    rejected = pd.DataFrame(rej_rows, columns=REJECTED_COLUMNS).astype(
        {"source": str, "row": "int64", "reason": str, "detail": str})
    return clips, rejected


def ingest(inputs, out_dir, *, workers: int = 2, min_duration: float = 2.0, min_bpp: float = 0.02,
           min_fps: float = 16, ar_range=(1 / 3, 3), clip_min: float = 2.0, clip_max: float = 8.0,
           max_fps: float = 30, max_long_side: int = 1080, scene_threshold: float = 15.0, crop_limit: int = 24,
           progress: bool = True) -> IngestResult:
    """Ingest a folder / list / manifest of videos into `out_dir` (see the module docstring).

    Raises `IngestError` when there is nothing to ingest, or when every source was rejected for one and the
    same reason (the tables are written first, so `rejected.parquet` shows each source's detail)."""
    t0 = time.perf_counter()
    check_video_backend()  # a missing codec/filter is one error here, not every source rejected as broken
    params = IngestParams(min_duration=min_duration, min_bpp=min_bpp, min_fps=float(min_fps),
                          ar_range=tuple(float(x) for x in ar_range), clip_min=clip_min, clip_max=clip_max,
                          max_fps=float(max_fps), max_long_side=int(max_long_side),
                          scene_threshold=float(scene_threshold), crop_limit=int(crop_limit))
    out = Path(out_dir)
    (out / ".done").mkdir(parents=True, exist_ok=True)
    jobs = read_inputs(inputs)
    if not jobs:
        raise IngestError(f"{inputs}: no videos to ingest (a folder is searched for {', '.join(sorted(VIDEO_EXTS))}; "
                          f"a manifest needs rows)")
    results, todo, skipped = _finished_or_rejected(jobs, out, params)
    _process_sources(todo, out, params, workers, progress, results)
    clips, rejected = _tables(jobs, results)
    clips_path, rejected_path = out / "clips.parquet", out / "rejected.parquet"
    write_table(clips, clips_path)
    write_table(rejected, rejected_path)
    write_text_atomic(out / "lineage.json", json.dumps(_lineage(inputs, jobs, clips_path, rejected_path), indent=1))
    reasons = set(rejected["reason"])
    if clips.empty and len(reasons) == 1:
        (reason,) = reasons
        raise IngestError(f"every one of the {len(rejected)} sources was rejected for the same reason {reason!r} "
                          f"(first: {rejected['detail'].iloc[0]}); see {rejected_path}")
    return IngestResult(clips_path=clips_path, rejected_path=rejected_path, clips=clips, rejected=rejected,
                        processed=len(todo), skipped=skipped,
                        counts=rejected["reason"].value_counts().to_dict(), seconds=time.perf_counter() - t0)
