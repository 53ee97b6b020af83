"""The real VBench, run where its weights are mounted: weight manifest, subprocess, results parsing.

VBench is never imported here (it pins numpy<2, transformers==4.33.2, CUDA <= 12.1): it runs in its own
interpreter (`vbench_python`) through `vbench_driver.py`, with offline environment variables, and only for the
dimensions whose weight files all exist, so VBench's `wget` fallbacks never fire (`docs/eval.md`).

Weights root layout (`vbench_weights`): VBench's cache as `init_submodules` expects it (`clip_model/`,
`dino_model/`, ...), plus `torch/` (TORCH_HOME: DINO's hub checkpoint) and `huggingface/` (HF_HOME:
bert-base-uncased for GRiT/Tag2Text). A `weights_manifest.json` in the root, if present, replaces the built-in
file lists: `{"files": {dimension: [relative paths]}, "sha256": {relative path: hex}}`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from soraflow.common.digests import file_sha256

from .vbench_scores import DIMENSIONS

# Paths relative to the weights root; "torch/..." and "huggingface/..." are TORCH_HOME / HF_HOME entries.
_BERT = "huggingface/hub/models--bert-base-uncased"
_GRIT = ["grit_model/grit_b_densecap_objectdet.pth", _BERT]
_VICLIP = ["ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"]
DEFAULT_FILES: dict[str, list[str]] = {
    "subject_consistency": ["dino_model/facebookresearch_dino_main/hubconf.py", "dino_model/dino_vitbase16_pretrain.pth",
                            "torch/hub/checkpoints/dino_vitbase16_pretrain.pth"],
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "temporal_flickering": [],  # pure pixels; the static filter (RAFT) is not run by this adapter
    "motion_smoothness": ["amt_model/amt-s.pth"],
    "dynamic_degree": ["raft_model/models/raft-things.pth"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "imaging_quality": ["pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"],
    "object_class": _GRIT,
    "multiple_objects": _GRIT,
    "color": _GRIT,
    "spatial_relationship": _GRIT,
    "human_action": ["umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth"],
    "scene": ["caption_model/tag2text_swin_14m.pth", _BERT],
    "appearance_style": ["clip_model/ViT-B-32.pt"],
    "temporal_style": _VICLIP,
    "overall_consistency": _VICLIP,
}
# VBench's custom_input mode refuses these (they need auxiliary_info from the standard suite).
NEEDS_AUX_INFO = {"object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass
class WeightCheck:
    runnable: list[str]
    skipped: dict[str, str]  # dimension -> reason
    root: str | None


def check_weights(weights_root: str | None, dimensions=None, mode: str = "vbench_standard") -> WeightCheck:
    """Which dimensions can run: every listed file exists (and matches its sha256 when the manifest gives one)."""
    dims = list(dimensions or DIMENSIONS)
    if not weights_root:
        return WeightCheck([], {d: "weights_missing: no VBench weights root given (--vbench-weights)" for d in dims},
                           None)
    root = Path(weights_root)
    if not root.is_dir():
        return WeightCheck([], {d: f"weights_missing: VBench weights root {root} is not a folder" for d in dims},
                           str(root))
    files, sums = DEFAULT_FILES, {}
    manifest = root / "weights_manifest.json"
    if manifest.exists():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            files = {**DEFAULT_FILES, **doc.get("files", {})}
            sums = doc.get("sha256", {})
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{manifest}: not a valid weight manifest ({exc})") from exc
    runnable, skipped = [], {}
    for d in dims:
        if d not in files:
            skipped[d] = f"not_in_manifest: {manifest if manifest.exists() else 'built-in list'} has no entry for {d}"
            continue
        if mode == "custom_input" and d in NEEDS_AUX_INFO:
            skipped[d] = "mode: VBench's custom_input mode cannot run this dimension (needs auxiliary_info)"
            continue
        missing = [f for f in files[d] if not (root / f).exists()]
        if missing:
            skipped[d] = "weights_missing: " + ", ".join(str(root / f) for f in missing)
            continue
        bad = [f for f in files[d] if f in sums and (root / f).is_file() and file_sha256(root / f) != sums[f]]
        if bad:
            skipped[d] = "weights_mismatch: sha256 differs for " + ", ".join(bad)
            continue
        runnable.append(d)
    return WeightCheck(runnable, skipped, str(root))


def vbench_env(weights_root: str, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    root = Path(weights_root).resolve()
    env.update(OFFLINE_ENV)
    env["VBENCH_CACHE_DIR"] = str(root)
    env["TORCH_HOME"] = str(root / "torch")
    env["HF_HOME"] = str(root / "huggingface")
    return env


def parse_results(path: str | Path) -> dict[str, dict]:
    """VBench's `{name}_eval_results.json`: `{dim: [aggregate, [{"video_path", "video_results"}, ...]]}`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"VBench results {path}: cannot be read ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"VBench results {path}: expected an object keyed by dimension")
    out = {}
    for dim, value in doc.items():
        if dim not in DIMENSIONS:
            raise ValueError(f"VBench results {path}: unknown dimension {dim!r}")
        if not isinstance(value, list) or not value or isinstance(value[0], bool) or not isinstance(value[0], (int, float)):
            raise ValueError(f"VBench results {path}: field {dim!r} must be [score, [per-video results]]")
        per_video = value[1] if len(value) > 1 and isinstance(value[1], list) else []
        out[dim] = {"raw": float(value[0]), "n_videos": len(per_video),
                    "per_video": [{"video_path": v.get("video_path"), "video_results": v.get("video_results")}
                                  for v in per_video if isinstance(v, dict)]}
    return out


@dataclass
class VBenchRun:
    scores: dict[str, dict] = field(default_factory=dict)  # dim -> {raw, n_videos, per_video, source}
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    ran: bool = False


def run_vbench(videos_path: str, full_info: str, out_dir: str, *, vbench_python: str | None,
               weights_root: str | None, dimensions=None, mode: str = "vbench_standard", device: str = "cuda",
               timeout: float = 6 * 3600) -> VBenchRun:
    check = check_weights(weights_root, dimensions, mode)
    run = VBenchRun(skipped=dict(check.skipped))
    if not vbench_python:
        for d in check.runnable:
            run.skipped[d] = "no_vbench_python: VBench's interpreter not given (--vbench-python)"
        return run
    if not check.runnable:
        return run
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    driver = Path(__file__).with_name("vbench_driver.py")
    cmd = [vbench_python, str(driver), "--videos-path", str(videos_path), "--full-info", str(full_info),
           "--output-dir", str(out), "--dimensions", ",".join(check.runnable), "--mode", mode, "--device", device]
    run.command, run.ran = cmd, True
    try:
        proc = subprocess.run(cmd, env=vbench_env(weights_root), capture_output=True, text=True, timeout=timeout)
        (out / "vbench_stdout.txt").write_text(proc.stdout[-200000:] + "\n--- stderr ---\n" + proc.stderr[-200000:])
    except (OSError, subprocess.TimeoutExpired) as exc:
        for d in check.runnable:
            run.errors[d] = f"VBench subprocess failed: {exc}"
        return run
    for d in check.runnable:
        res, err = out / f"{d}_eval_results.json", out / f"{d}_error.txt"
        if res.exists():
            try:
                parsed = parse_results(res)
                if d not in parsed:
                    raise ValueError(f"VBench results {res}: no entry for {d!r}")
                run.scores[d] = {**parsed[d], "source": "vbench-0.1.5", "results_file": str(res)}
            except ValueError as exc:
                run.errors[d] = str(exc)
        elif err.exists():
            run.errors[d] = err.read_text()[-2000:]
        else:
            run.errors[d] = f"VBench wrote no results (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    return run
