"""Glue between the pipeline's Model artifacts and `run_eval`: which generation preset each trained model is,
which autoencoder decodes it, which networks are "the same network at initialisation", and the learning checks
(components/eval/learning.py). A plain function so it is tested without KFP (component.py calls it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from soraflow.common.atomic import write_text_atomic
from soraflow.components.eval.eval import EvalModel, EvalResult, run_eval

# DiT config name (in the stage's resolved recipe) -> generation preset of inference.
PRESET_BY_DIT_CONFIG = {"opensora2-11b": "opensora2", "opensora2-hc": "opensora2-hc", "tiny": "tiny",
                        "tiny-hc": "tiny-hc", "gpu-demo": "gpu-demo", "gpu-demo-hc": "gpu-demo-hc"}
MODEL_FILE = "model.safetensors"
AE_FILE = "autoencoder.safetensors"  # the frozen autoencoder a stage trained on, when it had no weights file
INIT_FILE = "init.safetensors"  # the network at step 0 (recipes with heldout.export_init)
HELDOUT_DIMENSIONS = ["temporal_flickering", "dynamic_degree", "motion_smoothness", "subject_consistency",
                      "background_consistency", "imaging_quality"]


def preset_of(model_dir: str) -> str:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: Model artifact has no config.json (the stage's resolved recipe)")
    name = json.loads(config.read_text())["model"]["config"]
    if name not in PRESET_BY_DIT_CONFIG:
        raise ValueError(f"{config}: DiT config {name!r} has no generation preset ({sorted(PRESET_BY_DIT_CONFIG)})")
    return PRESET_BY_DIT_CONFIG[name]


def t5_length_of(model_dir: str) -> int:
    """The T5 length the stage trained with (its resolved recipe's text.t5_max_length)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return int(cfg.get("text", {}).get("t5_max_length", 512))


def _weights(folder: str | None, name: str) -> str | None:
    if not folder:
        return None
    path = Path(folder) / name
    return str(path) if path.is_file() else None


def _stage_metrics(folder: str | None) -> dict | None:
    path = Path(folder) / "metrics.json" if folder else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def _autoencoder_file(folder: str | None) -> str | None:
    if not folder:
        return None
    ref = Path(folder) / "weights.json"  # an autoencoder step that was given weights records their path
    return json.loads(ref.read_text())["weights"] if ref.is_file() else _weights(folder, MODEL_FILE)


def complete_init(init_file: str, preset: str, out_file: Path) -> str:
    """The stage-1 step-0 network in the stage-3 architecture: stage 1 (text-to-video) has no cond_in, which
    the later stages add zero-initialised (soraflow.training.builders.load_pretrained); for text-to-video inputs the two
    are the same function. Written out so the strict generation loader can read it."""
    from safetensors.torch import save_file

    from soraflow.models.mmdit import MMDiT, get_config
    from soraflow.training.builders import load_pretrained

    import torch

    from soraflow.inference.generate import PIPELINES

    torch.manual_seed(0)
    model = MMDiT(get_config(PIPELINES[preset].dit_config))
    load_pretrained(model, init_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_file))
    return str(out_file)


def distill_handoff(stage3_file: str, distill_init: str, reinit: list[str]) -> dict:
    """Every tensor of distill's step-0 network outside the re-initialised prefixes equals stage 3's export."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(stage3_file), load_file(distill_init)
    keys = [k for k in b if not any(k == p or k.startswith(p + ".") for p in reinit)]
    equal = all(k in a and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in keys)
    return {"equal": bool(equal and keys), "n_tensors": len(keys)}


def heldout_suite(reference_table: str, out_dir: Path, max_prompts: int | None = None) -> str:
    """A prompt suite of the held-out clips' training captions (VBench's full_info format), so samples are drawn
    for exactly the content the distribution distance compares them with."""
    from .heldout import list_reference_clips

    rows = list_reference_clips(reference_table)
    entries, seen = [], set()
    for r in rows:
        p = r.get("caption") or r.get("text")
        if p and p not in seen:
            seen.add(p)
            entries.append({"prompt_en": p, "dimension": HELDOUT_DIMENSIONS})
    if not entries:
        raise ValueError(f"{reference_table}: no held-out clip has a caption to prompt with")
    path = out_dir / "heldout_suite.json"
    write_text_atomic(path, json.dumps({"name": "heldout", "source": str(reference_table),
                                        "prompts": entries[:max_prompts] if max_prompts else entries}, indent=1))
    return str(path)


def psnr_targets(stages: dict) -> dict:
    """The autoencoders' PSNR targets by the recipe that trained each (soraflow.training.recipes.PSNR_TARGETS); an
    autoencoder given as weights, or trained by a recipe not listed there, keeps the default bar."""
    from soraflow.training.recipes import PSNR_TARGETS

    out = {}
    for name, stage in (("hunyuan_vae", "hunyuan_vae_train"), ("dcae", "vae_train")):
        recipe = (stages.get(stage) or {}).get("recipe")
        if recipe in PSNR_TARGETS:
            out[name] = PSNR_TARGETS[recipe]
    return out


def _ae_psnr(kind: str, weights: str | None, reference_table: str, num_frames: int, height: int, width: int,
             max_clips: int, cache=None) -> dict:
    """Held-out PSNR (and the reconstructions, for the report) of one autoencoder weights file. Clip by clip
    through `cache` (soraflow.components.eval.heldout.HeldoutCache): the eval's held-out pass has scored the trained
    autoencoders on the same clips, views and seeds already."""
    import torch

    from soraflow.inference.generate import build_autoencoder
    from soraflow.training.heldout import ae_heldout_metrics, load_heldout_clips

    from .heldout import HeldoutCache

    if not weights:
        return {}
    cache = cache if cache is not None else HeldoutCache()
    clips = load_heldout_clips(reference_table, num_frames, height, width, max_clips)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    built = []

    def ae():
        if not built:
            built.append(build_autoencoder(kind, "tiny" in _config_of(weights), Path(weights), dev,
                                           torch.float32))
        return built[0]

    per_clip = [cache.get("ae", weights, (str(Path(c.path).resolve()), num_frames, height, width, i,
                                          str(torch.float32)),
                          lambda c=c, i=i: ae_heldout_metrics(ae(), [c], dev, torch.float32, with_ssim=True,
                                                              first_index=i))
                for i, c in enumerate(clips)]
    return {"psnr": float(np.mean([m["psnr"] for m in per_clip])),
            "ssim": float(np.mean([m["ssim"] for m in per_clip])),
            "recons": [m["recons"][0] for m in per_clip], "frames": [c.frames for c in clips],
            "paths": [c.path for c in clips], "captions": [c.caption for c in clips]}


def _config_of(weights: str) -> str:
    """The config an export of ours names; "" for other files (released weights carry no such metadata and
    are full size)."""
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        return (f.metadata() or {}).get("config", "")


def eval_step(stage3_dir: str, distilled_dir: str, autoencoder_dir: str, out_dir: str, *, hunyuan_vae: str = "",
              text_encoders: str = "", reference_clips: str | None = None, num_frames: int = 129,
              stage1_dir: str | None = None, stage2_dir: str | None = None, stage_ae_dir: str | None = None,
              suite: str = "mini", seeds=(0,), **kwargs) -> EvalResult:
    """The stage-3 model and the distilled model side by side on the same prompts and seeds, with the same
    networks at initialisation beside them when the stages exported them (`init.safetensors`), and the learning
    checks: every trained model against its initialisation on the held-out clips."""
    out = Path(out_dir)
    stage3_ae = hunyuan_vae or _autoencoder_file(stage_ae_dir) or _weights(stage3_dir, AE_FILE)
    if stage3_ae is None:
        raise ValueError(f"{stage3_dir}: no {AE_FILE} in the stage-3 Model artifact and no hunyuan_vae given: "
                         "nothing to decode its latents with")
    dcae = _weights(autoencoder_dir, MODEL_FILE)
    weights_dir = text_encoders or None
    hc_frames = num_frames - num_frames % 4  # the Video DC-AE takes 4k frames where the VAE takes 4k+1
    s3_preset, hc_preset = preset_of(stage3_dir), preset_of(distilled_dir)
    s3_len, hc_len = t5_length_of(stage3_dir), t5_length_of(distilled_dir)
    models = [EvalModel("stage3", s3_preset, dit=_weights(stage3_dir, MODEL_FILE), ae=stage3_ae,
                        weights_dir=weights_dir, t5_max_length=s3_len),
              EvalModel("distilled", hc_preset, dit=_weights(distilled_dir, MODEL_FILE), ae=dcae,
                        weights_dir=weights_dir, num_frames=hc_frames, t5_max_length=hc_len)]
    chain_init = _weights(stage1_dir, INIT_FILE)
    distill_init = _weights(distilled_dir, INIT_FILE)
    if chain_init:
        init_file = complete_init(chain_init, s3_preset, out / "init-networks" / "stage3-init.safetensors")
        models.append(EvalModel("stage3-init", s3_preset, dit=init_file, ae=stage3_ae, weights_dir=weights_dir,
                                t5_max_length=s3_len))
    if distill_init:
        models.append(EvalModel("distilled-init", hc_preset, dit=distill_init, ae=dcae, weights_dir=weights_dir,
                                num_frames=hc_frames, t5_max_length=hc_len))
    if suite == "heldout":
        if not reference_clips:
            raise ValueError("suite 'heldout' prompts with the held-out clips' captions: give reference_clips")
        suite = heldout_suite(reference_clips, out, kwargs.pop("max_prompts", None))
    stages = {"hunyuan_vae_train": _stage_metrics(stage_ae_dir), "vae_train": _stage_metrics(autoencoder_dir),
              "dit_stage1": _stage_metrics(stage1_dir), "dit_stage2": _stage_metrics(stage2_dir),
              "dit_stage3": _stage_metrics(stage3_dir), "distill": _stage_metrics(distilled_dir)}
    handoff = None
    if distill_init and _weights(stage3_dir, MODEL_FILE):
        cfg = json.loads((Path(distilled_dir) / "config.json").read_text())
        handoff = distill_handoff(_weights(stage3_dir, MODEL_FILE), distill_init, cfg["model"].get("reinit") or [])

    from .heldout import HeldoutCache

    cache = HeldoutCache()  # shared by the eval's held-out pass and the learning checks

    def learning(doc: dict, scored: list[dict], out_path: Path) -> dict:
        return _learning(doc, scored, out_path, reference_clips=reference_clips, stages=stages, handoff=handoff,
                         cache=cache,
                         stage3_ae=stage3_ae, stage_ae_dir=stage_ae_dir, autoencoder_dir=autoencoder_dir,
                         num_frames=num_frames, hc_frames=hc_frames, height=kwargs.get("height") or 64,
                         width=kwargs.get("width") or 64, max_clips=kwargs.get("max_reference_clips", 8))

    return run_eval(models, out_dir, reference_clips=reference_clips, num_frames=num_frames, suite=suite,
                    seeds=seeds, learning=learning if reference_clips else None, heldout_cache=cache, **kwargs)


def _learning(doc, scored, out: Path, *, reference_clips, stages, handoff, cache, stage3_ae, stage_ae_dir,
              autoencoder_dir, num_frames, hc_frames, height, width, max_clips) -> dict:
    from soraflow.common.video_io import read_video

    from .learning import fd_proxy, gates_passed, learning_checks, reference_windows, video_features
    from .report import write_grid_thumbs

    import time

    t0 = time.perf_counter()
    seconds = {}
    # autoencoders: trained vs their own step-0 weights, on the held-out clips
    hy = _ae_psnr("hunyuan", stage3_ae, reference_clips, num_frames, height, width, max_clips, cache)
    hy0 = _ae_psnr("hunyuan", _weights(stage_ae_dir, INIT_FILE), reference_clips, num_frames, height, width,
                   max_clips, cache)
    dc = _ae_psnr("dcae", _weights(autoencoder_dir, MODEL_FILE), reference_clips, hc_frames, height, width,
                  max_clips, cache)
    dc0 = _ae_psnr("dcae", _weights(autoencoder_dir, INIT_FILE), reference_clips, hc_frames, height, width,
                   max_clips, cache)
    ae = {"hunyuan_vae": {"trained": hy.get("psnr"), "init": hy0.get("psnr"), "ssim": hy.get("ssim")},
          "dcae": {"trained": dc.get("psnr"), "init": dc0.get("psnr"), "ssim": dc.get("ssim")}}
    seconds["autoencoders"] = round(time.perf_counter() - t0, 3)

    # samples vs held-out clips: an FVD-like distance on hand-crafted features (proxy)
    from .heldout import list_reference_clips

    refs = {}
    for nf in sorted({num_frames, hc_frames}):
        feats = []
        for c in list_reference_clips(reference_clips):
            try:
                frames, _ = read_video(c["path"])
            except Exception:  # noqa: BLE001 - an unreadable reference is already in the held-out errors
                continue
            feats += [video_features(w) for w in reference_windows(frames, nf)]
        refs[nf] = np.array(feats)
    fd, per_model = {}, {}
    for name in doc["models"]:
        rows = [r for r in scored if r.get("model") == name and r.get("status") == "ok"]
        feats = []
        for r in rows:
            frames, _ = read_video(r["path"])
            feats.append(video_features(frames))
        nf = num_frames if not name.startswith("distilled") else hc_frames
        if len(feats) >= 2 and len(refs.get(nf, [])) >= 2:
            per_model[name] = fd_proxy(refs[nf], np.array(feats))
    seconds["fd_proxy"] = round(time.perf_counter() - t0 - seconds["autoencoders"], 3)
    for model in ("stage3", "distilled"):
        fd[model] = {"trained": per_model.get(model), "init": per_model.get(f"{model}-init")}
    checks = learning_checks(ae=ae, stages=stages, fd=fd, handoff_weights=handoff,
                             ae_psnr_min=psnr_targets(stages))
    grid = write_grid_thumbs(out, scored, hy, dc)
    seconds["grid_thumbs"] = round(time.perf_counter() - t0 - sum(seconds.values()), 3)
    curves = {s: {"losses": (m or {}).get("losses", []), "heldout": (m or {}).get("heldout", [])}
              for s, m in stages.items()}
    return {"checks": checks, "passed": gates_passed(checks), "targets_met": all(c["passed"] for c in checks),
            "autoencoders": ae,
            "fd_proxy": {"per_model": per_model, "n_reference_windows": {str(k): len(v) for k, v in refs.items()},
                         "kind": "proxy", "what": "Fréchet distance of 12 hand-crafted spatio-temporal video "
                                                 "features (colour, texture, motion) to held-out clips; FVD's "
                                                 "recipe without I3D, not comparable with FVD"},
            "curves": curves, "grid": grid, "seconds": seconds}
