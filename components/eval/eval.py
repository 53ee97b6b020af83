"""The eval step: sample every model on one prompt suite with the same seeds, score the videos (real VBench where
its weights are mounted, labelled offline metrics everywhere), held-out AE/flow-matching numbers, speed, and a
side-by-side report (metrics.json, report.md, report.html with SVG plots and GIF thumbnails).
"""

from __future__ import annotations

import json
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from soraflow.common.atomic import write_text_atomic
from soraflow.common.dtypes import torch_dtype
from soraflow.common.provenance import source_commit
from soraflow.common.video_io import VideoReadError, read_video

from . import metrics as M
from .suite import Suite, load_suite, video_file_name
from .vbench_runner import run_vbench
from .vbench_scores import DIMENSIONS, VBENCH_COMMIT, aggregate, normalize

SCHEMA_VERSION = 1
# offline metric -> the VBench dimension whose prompt subset it is averaged over
METRIC_DIMENSION = {
    "temporal_flickering": "temporal_flickering", "static_dis": "temporal_flickering",
    "dynamic_degree_dis": "dynamic_degree", "motion_smoothness_linear": "motion_smoothness",
    "subject_consistency_ssim": "subject_consistency", "background_consistency_hist": "background_consistency",
    "imaging_sharpness": "imaging_quality", "imaging_noise_sigma": "imaging_quality",
}


@dataclass
class EvalModel:
    name: str
    preset: str
    dit: str | None = None
    ae: str | None = None
    ae_kind: str | None = None  # "hunyuan" | "dcae"; taken from the preset when None
    weights_dir: str | None = None
    t5: str | None = None
    clip: str | None = None
    random_init: bool = False
    num_frames: int | None = None  # e.g. 129 for the HunyuanVideo VAE, 128 for the Video DC-AE
    t5_max_length: int = 512  # the T5 length the DiT was trained with


@dataclass
class EvalResult:
    metrics_json: Path
    report_md: Path
    report_html: Path
    manifest: Path
    metrics: dict = field(default_factory=dict)


def _versions() -> dict:
    import cv2
    import skimage
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "scikit-image": skimage.__version__, "vbench_constants_commit": VBENCH_COMMIT}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_manifest(path: str | Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({exc})") from exc
    return rows


# --- sampling ------------------------------------------------------------------------------------------------

def sample_models(models: list[EvalModel], suite: Suite, samples_dir: Path, *, seeds, num_frames: int,
                  resolution: str, aspect_ratio: str, height, width, steps: int, fps: int, device, dtype,
                  progress: bool = False) -> list[dict]:
    """Every model x prompt x seed index, VBench names `{prompt}-{index}.mp4`; one manifest row per video."""
    import torch

    from soraflow.inference import PIPELINES, GenerateOptions, build_pipeline, generate

    rows = []
    for m in models:
        if m.preset not in PIPELINES:
            raise ValueError(f"model {m.name!r}: unknown preset {m.preset!r}; known: {sorted(PIPELINES)}")
        nf = m.num_frames or num_frames
        base = GenerateOptions(prompts=["x"], model=m.preset, weights_dir=m.weights_dir, dit=m.dit, ae=m.ae, t5=m.t5,
                               clip=m.clip, random_init=m.random_init, num_frames=nf, t5_max_length=m.t5_max_length, resolution=resolution,
                               aspect_ratio=aspect_ratio, height=height, width=width, steps=steps, fps=fps,
                               device=device, dtype=dtype, progress=progress)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tdtype = torch_dtype(dtype, torch.bfloat16 if dev.type == "cuda" else torch.float32)
        t0 = time.perf_counter()
        pipe = build_pipeline(base, dev, tdtype)
        load_s = time.perf_counter() - t0
        for sp in suite.prompts:
            for index, seed in enumerate(seeds):
                path = samples_dir / m.name / video_file_name(sp.prompt, index)
                row = {"model": m.name, "preset": m.preset, "prompt": sp.prompt, "index": index, "seed": int(seed),
                       "dimensions": list(sp.dimensions), "path": str(path), "fps": fps, "num_frames": nf,
                       "steps": steps, "pipeline_load_seconds": round(load_s, 4)}
                opts = GenerateOptions(**{**asdict(base), "prompts": [sp.prompt], "seed": int(seed), "out": str(path)})
                try:
                    t0 = time.perf_counter()
                    res = generate(opts, pipeline=pipe)
                    row.update(status="ok", seconds=time.perf_counter() - t0, seconds_parts=res.seconds,
                               peak_memory_gb=res.peak_memory_gb, height=res.height, width=res.width)
                except (RuntimeError, ValueError, OSError) as exc:  # one failed sample does not stop the rest
                    row.update(status="error", error=f"{type(exc).__name__}: {exc}")
                rows.append(row)
        del pipe
    return rows


# --- offline scoring -----------------------------------------------------------------------------------------

def score_videos(rows: list[dict]) -> list[dict]:
    """Per-video offline metrics; an unreadable or missing file becomes an error row, the rest go on."""
    out = []
    for row in rows:
        r = dict(row)
        path = r.get("path")
        if r.get("status") == "error":
            out.append(r)
            continue
        if not path:
            r.update(status="error", error="manifest row has no 'path'")
        elif not Path(path).is_file():
            r.update(status="error", error=f"{path}: file does not exist")
        else:
            try:
                frames, fps = read_video(path)
                r["metrics"] = M.per_video_metrics(frames, fps or float(r.get("fps") or 0))
                r["status"] = "ok"
            except (VideoReadError, ValueError) as exc:
                r.update(status="error", error=str(exc))
        out.append(r)
    return out


def _summarise_offline(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "ok" and "metrics" in r]
    proxy = {}
    for name, (kind, what) in M.METRIC_INFO.items():
        dim = METRIC_DIMENSION[name]
        tagged = [r for r in ok if dim in (r.get("dimensions") or [])]
        subset, label = (tagged, f"prompts tagged {dim}") if tagged else (ok, "all prompts (none tagged)")
        if name == "temporal_flickering":
            # VBench's protocol scores only videos its static filter keeps
            kept = [r for r in subset if r["metrics"]["static_dis"] == 1.0]
            vals = [r["metrics"][name] for r in kept]
            proxy[name] = {"value": float(np.mean(vals)) if vals else None, "kind": kind, "what": what,
                           "n_videos": len(vals), "subset": label + ", static by DIS filter",
                           **({} if vals else {"reason": "no video passed the static filter"})}
            allv = [r["metrics"][name] for r in subset]
            proxy["temporal_flickering_all"] = {
                "value": float(np.mean(allv)) if allv else None, "kind": kind, "n_videos": len(allv),
                "what": "VBench's own definition on every video of the subset (no static filter)", "subset": label}
            continue
        vals = [r["metrics"][name] for r in subset if r["metrics"].get(name) is not None]
        proxy[name] = {"value": float(np.mean(vals)) if vals else None, "kind": kind, "what": what,
                       "n_videos": len(vals), "subset": label, **({} if vals else {"reason": "no scorable video"})}
    return proxy


def _speed(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "ok" and "seconds" in r]
    if not ok:
        return {"seconds_per_video": None, "reason": "no video was generated in this run"}
    parts = {}
    for r in ok:
        for k, v in (r.get("seconds_parts") or {}).items():
            parts.setdefault(k, []).append(v)
    peaks = [r["peak_memory_gb"] for r in ok if r.get("peak_memory_gb") is not None]
    return {"seconds_per_video": float(np.mean([r["seconds"] for r in ok])),
            "seconds_parts_per_video": {k: float(np.mean(v)) for k, v in parts.items() if k != "load"},
            "pipeline_load_seconds": ok[0].get("pipeline_load_seconds"),
            "peak_memory_gb": max(peaks) if peaks else None,
            "peak_memory_note": "torch.cuda.max_memory_allocated" if peaks else
                                "not measured on CPU (see process_peak_rss_gb)",
            "n_videos": len(ok)}


def _heldout(models: list[EvalModel], reference_clips: str, *, num_frames, height, width, resolution,
             aspect_ratio, device, dtype, max_clips: int, cache=None) -> tuple[dict, dict]:
    """Held-out numbers per model with the trainer's own functions (`soraflow.training.heldout`): the same clip view,
    seeds, timestep grid and noise, so a model's numbers here equal the end of its training curve."""
    import torch

    from soraflow.inference import GenerateOptions, build_pipeline
    from soraflow.models.aspect import inference_size
    from soraflow.training.heldout import (HeldoutClip, HeldoutLatents, ae_heldout_metrics, fm_heldout_loss,
                                  load_clip_frames)

    from .heldout import HeldoutCache, list_reference_clips

    cache = cache if cache is not None else HeldoutCache()
    clips = list_reference_clips(reference_clips)[:max_clips]
    out, meta = {}, {"reference_clips": str(reference_clips), "n_clips": len(clips)}
    for m in models:
        nf = m.num_frames or num_frames
        opts = GenerateOptions(prompts=["x"], model=m.preset, weights_dir=m.weights_dir, dit=m.dit, ae=m.ae, t5=m.t5,
                               clip=m.clip, random_init=m.random_init, num_frames=nf, t5_max_length=m.t5_max_length, device=device, dtype=dtype)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tdtype = torch_dtype(dtype, torch.bfloat16 if dev.type == "cuda" else torch.float32)
        pipe = build_pipeline(opts, dev, tdtype)
        div = pipe.ae.spatial_compression * pipe.dit.config.patch_size
        h, w = (height, width) if height and width else inference_size(resolution, aspect_ratio, div)
        per_clip, errors = [], []
        for i, c in enumerate(clips):
            try:
                clip = HeldoutClip(c["path"], c.get("caption") or c["text"], load_clip_frames(c["path"], nf, h, w))
                view = (str(Path(c["path"]).resolve()), nf, h, w, i, str(tdtype))
                ae_m = cache.get("ae", m.ae, view, lambda: ae_heldout_metrics(pipe.ae, [clip], dev, tdtype,
                                                                              with_ssim=True, first_index=i))
                # the encoded clip with its fixed noise and caption features: the same for every DiT that
                # shares this autoencoder and text encoders
                latents = cache.get("latents", m.ae, (*view, clip.caption, m.preset, m.t5_max_length,
                                                      m.weights_dir, m.t5, m.clip),
                                    lambda: HeldoutLatents(pipe.ae, pipe.text, [clip], dev, tdtype, first_index=i))
                fm = fm_heldout_loss(pipe.dit, latents)
                per_clip.append({"path": c["path"], "psnr": ae_m["psnr"], "ssim": ae_m["ssim"],
                                 "fm_loss": fm["fm_loss"], "fm_loss_mean": fm["fm_loss_mean"]})
            except (VideoReadError, ValueError, RuntimeError) as exc:
                errors.append({"path": c["path"], "error": str(exc)})
        if per_clip:
            grid = per_clip[0]["fm_loss"].keys()
            out[m.name] = {
                "vae": {"psnr": float(np.mean([c["psnr"] for c in per_clip])),
                        "ssim": float(np.mean([c["ssim"] for c in per_clip])), "n_clips": len(per_clip),
                        "size": [nf, h, w]},
                "train": {"fm_val_loss": {t: float(np.mean([c["fm_loss"][t] for c in per_clip])) for t in grid},
                          "fm_val_loss_mean": float(np.mean([c["fm_loss_mean"] for c in per_clip])),
                          "n_clips": len(per_clip), "noise_seed": 1234},
                "heldout_errors": errors, "heldout_per_clip": per_clip}
        else:
            reason = "no readable reference clip" if clips else "reference clip set is empty"
            out[m.name] = {"vae": {"psnr": None, "ssim": None, "reason": reason},
                           "train": {"fm_val_loss": None, "reason": reason}, "heldout_errors": errors}
        del pipe
    return out, meta


def _vbench_block(run, suite_dims_per_video: int) -> dict:
    dims = {}
    for d in DIMENSIONS:
        if d in run.scores:
            s = run.scores[d]
            dims[d] = {"raw": s["raw"], "normalized": normalize(d, s["raw"]), "source": s["source"],
                       "n_videos": s["n_videos"], "results_file": s.get("results_file")}
        else:
            dims[d] = {"raw": None, "normalized": None,
                       "reason": run.errors.get(d) or run.skipped.get(d) or "not requested"}
    agg = aggregate({d: run.scores[d]["raw"] for d in run.scores})
    agg.pop("normalized")
    return {"dimensions": dims, "aggregates": agg}


def _full_info_for(suite: Suite) -> list[dict]:
    out = []
    for p in suite.prompts:
        e = {"prompt_en": p.prompt, "dimension": list(p.dimensions)}
        if p.auxiliary_info:
            e["auxiliary_info"] = p.auxiliary_info
        out.append(e)
    return out


def run_eval(models: list[EvalModel], out_dir: str, *, suite: str = "mini", seeds=(0,), num_frames: int = 129,
             resolution: str = "256px", aspect_ratio: str = "16:9", height: int | None = None,
             width: int | None = None, steps: int = 50, fps: int = 24, max_prompts: int | None = None,
             vbench_python: str | None = None, vbench_weights: str | None = None,
             vbench_mode: str = "vbench_standard", vbench_device: str = "cuda", reference_clips: str | None = None,
             max_reference_clips: int = 8, samples_manifest: str | None = None, history: list[str] | None = None,
             device: str | None = None, dtype: str | None = None, thumbnails: int = 4,
             progress: bool = False, learning=None, heldout_cache=None) -> EvalResult:
    """Sample (or take `samples_manifest`), score, report. See the module docstring. `learning(doc, scored, out)`
    may add a "learning" block (components/eval/learning.py) to the document before the reports are written."""
    if not models and not samples_manifest:
        raise ValueError("run_eval needs at least one model (or an existing samples_manifest)")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    if not seeds:
        raise ValueError("give at least one seed")
    # inputs checked before the output folder exists: a wrong path fails at once and leaves nothing behind
    the_suite = load_suite(suite, max_prompts)
    if reference_clips and not Path(reference_clips).exists():
        raise FileNotFoundError(f"reference clips {reference_clips}: no such folder or table (a curated set: "
                                f"the filter's --out-dir, or demo-out/curated after `make demo`)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    # wall seconds of each part, in the document, so a slow eval says where its time went
    parts, tick = {}, [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        parts[name] = round(now - tick[0], 3)
        tick[0] = now

    samples_dir = out / "samples"
    manifest = samples_dir / "manifest.jsonl"
    if samples_manifest:
        rows = read_manifest(samples_manifest)
        manifest = Path(samples_manifest)
    else:
        rows = sample_models(models, the_suite, samples_dir, seeds=list(seeds), num_frames=num_frames,
                             resolution=resolution, aspect_ratio=aspect_ratio, height=height, width=width,
                             steps=steps, fps=fps, device=device, dtype=dtype, progress=progress)
        _write_jsonl(manifest, rows)
    lap("sampling")
    scored = score_videos(rows)
    per_video = _write_jsonl(out / "per_video.jsonl", scored)
    lap("scoring")

    model_names = list(dict.fromkeys([m.name for m in models] + [r.get("model", "?") for r in rows]))
    info = {m.name: m for m in models}
    full_info = out / "vbench" / "full_info.json"
    write_text_atomic(full_info, json.dumps(_full_info_for(the_suite), indent=1, ensure_ascii=False))
    heldout, heldout_meta = ({}, {"reference_clips": None, "reason": "no reference clips given"})
    if reference_clips and models:
        heldout, heldout_meta = _heldout(models, reference_clips, num_frames=num_frames, height=height, width=width,
                                         resolution=resolution, aspect_ratio=aspect_ratio, device=device,
                                         dtype=dtype, max_clips=max_reference_clips, cache=heldout_cache)
    lap("heldout")
    results, vbench_meta = {}, {}
    for name in model_names:
        results[name], vbench_meta[name] = _model_result(
            name, info.get(name), [r for r in scored if r.get("model") == name], heldout.get(name, {}),
            samples_dir=samples_dir, full_info=full_info, out=out, num_frames=num_frames, n_seeds=len(seeds),
            vbench=dict(vbench_python=vbench_python, weights_root=vbench_weights, mode=vbench_mode,
                        device=vbench_device))
    doc = _document(out, started, the_suite, rows, results, seeds=seeds, num_frames=num_frames,
                    resolution=resolution, aspect_ratio=aspect_ratio, height=height, width=width, steps=steps,
                    fps=fps, device=device, dtype=dtype, backends={
                        "vbench": {"python": vbench_python, "weights_root": vbench_weights, "mode": vbench_mode,
                                   "per_model": vbench_meta},
                        "heldout": heldout_meta},
                    files={"manifest": str(manifest), "per_video": str(per_video),
                           "vbench_full_info": str(full_info)})
    lap("vbench_and_summaries")
    from .report import write_reports

    if learning is not None:
        doc["learning"] = learning(doc, scored, out)
        lap("learning")
    doc["run"]["seconds"] = parts
    md, html = write_reports(doc, out, scored, history=history or [], thumbnails=thumbnails)
    lap("report")
    metrics_path = write_text_atomic(out / "metrics.json", json.dumps(doc, indent=2, default=_json_default))
    return EvalResult(metrics_path, md, html, manifest, doc)


def _model_result(name: str, m: EvalModel | None, mrows: list[dict], h: dict, *, samples_dir: Path,
                  full_info: Path, out: Path, num_frames: int, n_seeds: int, vbench: dict) -> tuple[dict, dict]:
    """One model's block of metrics.json (VBench where it can run, the offline metrics, held-out numbers,
    speed, errors) and what the VBench run did."""
    vrun = run_vbench(str(samples_dir / name), str(full_info), str(out / "vbench" / name), **vbench)
    vbench_meta = {"ran": vrun.ran, "command": vrun.command, "runnable": sorted(vrun.scores), "errors": vrun.errors}
    preset = m.preset if m else (mrows[0].get("preset") if mrows else None)
    ae_kind = (m.ae_kind if m and m.ae_kind else None)
    if ae_kind is None and preset:
        from soraflow.inference import PIPELINES

        ae_kind = PIPELINES[preset].autoencoder if preset in PIPELINES else None
    no_ref = {"reason": "no reference clips given (--reference-clips)"}
    return {
        "preset": preset, "ae_kind": ae_kind, "dit": m.dit if m else None, "ae": m.ae if m else None,
        "random_init": m.random_init if m else None,
        "num_frames": (m.num_frames or num_frames) if m else None,
        "vbench": _vbench_block(vrun, n_seeds),
        "proxy": _summarise_offline(mrows),
        "vae": h.get("vae", {"psnr": None, "ssim": None, **no_ref}),
        "train": h.get("train", {"fm_val_loss": None, **no_ref}),
        "speed": _speed(mrows),
        "errors": [{"path": r.get("path"), "prompt": r.get("prompt"), "error": r.get("error")}
                   for r in mrows if r.get("status") == "error"] + h.get("heldout_errors", []),
        "n_videos": len(mrows), "n_videos_ok": sum(r.get("status") == "ok" for r in mrows),
    }, vbench_meta


def _document(out: Path, started, the_suite: Suite, rows: list[dict], results: dict, *, seeds, num_frames,
              resolution, aspect_ratio, height, width, steps, fps, device, dtype, backends: dict,
              files: dict) -> dict:
    """metrics.json: the run's settings and provenance, the backends used, and every model's results."""
    vbench = backends["vbench"]
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {"started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
                "git_sha": source_commit(), "out_dir": str(out),
                "suite": {"name": the_suite.name, "source": the_suite.source, "n_prompts": len(the_suite.prompts),
                          **{k: v for k, v in the_suite.meta.items() if k in ("commit", "license", "selection")}},
                "seeds": [int(s) for s in seeds], "num_frames": num_frames, "resolution": resolution,
                "aspect_ratio": aspect_ratio, "height": height, "width": width, "steps": steps, "fps": fps,
                "device": device, "dtype": dtype, "n_videos": len(rows),
                "process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20},
        "versions": _versions(),
        "backends": {
            "vbench": {**vbench,
                       "skipped": {d: v["reason"] for d, v in next(iter(results.values()))["vbench"]["dimensions"].items()
                                   if v.get("raw") is None} if results else {}},
            "offline": {"optical_flow": "OpenCV DIS (PRESET_MEDIUM)", "video_decode": "PyAV (soraflow.common.video_io)",
                        "ssim": "scikit-image structural_similarity (gaussian, sigma 1.5)",
                        "static_filter": "dis_proxy"},
            "heldout": backends["heldout"],
        },
        "files": files,
        "models": results,
    }


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def kfp_metrics(doc: dict) -> dict[str, float]:
    """Flat scalar metrics for a KFP `Metrics` artifact (`log_metric(name, value)`); nulls are left out."""
    flat = {}
    for name, m in doc["models"].items():
        for k, v in m["proxy"].items():
            if v.get("value") is not None:
                flat[f"{name}.proxy.{k}"] = v["value"]
        for k, v in m["vbench"]["aggregates"].items():
            if v.get("value") is not None:
                flat[f"{name}.vbench.{k}"] = v["value"]
        for k in ("psnr", "ssim"):
            if m["vae"].get(k) is not None:
                flat[f"{name}.vae.{k}"] = m["vae"][k]
        if m["train"].get("fm_val_loss_mean") is not None:
            flat[f"{name}.train.fm_val_loss_mean"] = m["train"]["fm_val_loss_mean"]
        if m["speed"].get("seconds_per_video") is not None:
            flat[f"{name}.speed.seconds_per_video"] = m["speed"]["seconds_per_video"]
    return flat
