"""FP8 training against bf16 on real clips: the same small MMDiT, data, noise and timesteps, bf16 and FP8
(torchao float8, `model.fp8`), trained with the trainer's one-GPU strategy; both loss curves recorded.

Two steps, because the GPU machine has no video decoder or text encoders:

1. `prepare` (CPU): clips from the sample set (`python -m soraflow.cli sample-data --out-dir DIR`, real
   photographs with known camera motion), read with the project's video reader, centre-cropped and resized,
   encoded by the project's autoencoder (the tiny HunyuanVideo VAE with its seeded weights, as the tiny
   recipes train with; full encode with a posterior sample) and their captions by the tiny T5/CLIP; saved as one
   small tensor file.
2. `train` (GPU): for each variant, the same init, the same batch order, the same flow-matching draws
   (timesteps with the resolution shift, noise) from one seed; AdamW through `build_strategy(effective_strategy(
   "fsdp2", 1, "cuda"))`, gradient clipping 1.0; losses per step to JSON and a PNG of both curves.

Usage:
    python -m soraflow.cli sample-data --out-dir /tmp/raw
    python benchmarks/fp8_loss_curves.py prepare --raw /tmp/raw --out latents.pt
    python benchmarks/fp8_loss_curves.py train --latents latents.pt --steps 400 --out curves.json --png curves.png
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(args) -> None:
    from soraflow.common.video_io import read_video
    from soraflow.training.builders import build_autoencoder, build_text_conditioner
    from soraflow.training.config import AESpec, TextSpec

    manifest = Path(args.raw) / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"--raw {args.raw}: no manifest.csv (make one with `python -m soraflow.cli sample-data`)")
    rows = [r for r in csv.DictReader(manifest.open()) if r.get("expected", "accept") == "accept"]
    ae = build_autoencoder(AESpec(kind="hunyuan", tiny=True), torch.device("cpu"), torch.float32, seed=0)
    text = build_text_conditioner(TextSpec(tiny=True), torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    x0s, txts, vecs, names = [], [], [], []
    size, frames = args.size, args.frames
    for r in rows:
        path = Path(r["path"])
        if not path.is_absolute():
            path = manifest.parent / path
        try:
            video, _ = read_video(path)
        except Exception as exc:  # noqa: BLE001 - the sample set holds deliberately broken files
            print(f"skip {path.name}: {exc}")
            continue
        if video.shape[0] < frames:
            print(f"skip {path.name}: {video.shape[0]} frames < {frames}")
            continue
        for start in range(0, video.shape[0] - frames + 1, args.stride):
            clip = torch.from_numpy(np.ascontiguousarray(video[start:start + frames])).float()  # T H W 3, 0..255
            clip = clip.permute(3, 0, 1, 2) / 127.5 - 1.0  # 3 T H W in [-1, 1]
            h, w = clip.shape[-2:]
            s = min(h, w)
            clip = clip[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            with torch.no_grad():
                x0s.append(ae.encode(clip[None], generator=g)[0])
            enc = text.encode([r.get("text") or path.stem])
            txts.append(enc["txt"][0])
            vecs.append(enc["y_vec"][0])
            names.append(f"{path.name}@{start}")
    if not x0s:
        raise ValueError(f"no clip of {frames} frames in {manifest}")
    n_txt = max(t.shape[0] for t in txts)
    txt = torch.stack([F.pad(t, (0, 0, 0, n_txt - t.shape[0])) for t in txts])
    out = dict(x0=torch.stack(x0s).to(torch.bfloat16), txt=txt.to(torch.bfloat16),
               y_vec=torch.stack(vecs).to(torch.bfloat16), names=names,
               source=f"{manifest} ({len(rows)} accepted sources), {frames} frames at {size}x{size}, "
                      f"tiny HunyuanVideo VAE (seed 0), tiny T5/CLIP")
    torch.save(out, args.out)
    print(f"{len(x0s)} clips -> {args.out}: x0 {tuple(out['x0'].shape)}, txt {tuple(txt.shape)}")


def small_config():
    from soraflow.models.mmdit import get_config

    # Width 512 (8 heads of 64): every block linear is FP8-convertible; text/vector widths of the tiny encoders.
    return get_config("tiny", hidden_size=512, num_heads=8, axes_dim=(16, 24, 24), depth=2, depth_single_blocks=4)


def train_curve(data, recipe: str, args, device) -> dict:
    from soraflow.models.flow import (draw_train_noise, flow_matching_loss, inference_shift_alpha, noisy_latent,
                             sample_train_timesteps, velocity_target)
    from soraflow.models.mmdit import MMDiT
    from soraflow.models.packing import image_position_ids, pack, text_position_ids
    from soraflow.training.strategies import OptimConfig, build_strategy
    from soraflow.training.trainer import effective_strategy

    cfg = small_config()
    torch.manual_seed(args.seed)
    module = MMDiT(cfg)
    if recipe:
        from soraflow.training.parallel.fp8 import convert_to_fp8_training

        convert_to_fp8_training(module, recipe, emulate=device.type != "cuda")
    name = effective_strategy("fsdp2", 1, device.type) if device.type == "cuda" else "master"
    strategy = build_strategy(name, param_dtype="bf16")
    model, opt = strategy.prepare(module, device, OptimConfig(lr=args.lr, eps=1e-15))
    model.train()
    x0_all = data["x0"].to(device)
    txt_all, vec_all = data["txt"].to(device), data["y_vec"].to(device)
    n, b, p = x0_all.shape[0], args.batch, cfg.patch_size
    gen = torch.Generator(device).manual_seed(args.seed)
    order = torch.Generator().manual_seed(args.seed)
    losses, norms = [], []
    t0 = time.time()
    perm = torch.randperm(n, generator=order)
    pos = 0
    for step in range(args.steps):
        if pos + b > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos:pos + b].to(device)
        pos += b
        x0 = x0_all[idx].float()
        t_lat, h, w = x0.shape[2:]
        t = sample_train_timesteps(b, inference_shift_alpha(x0.shape, p), generator=gen, device=device)
        noise = draw_train_noise(x0.shape, generator=gen, device=device, dtype=torch.bfloat16).float()
        x_t = noisy_latent(x0, noise, t.float())
        kwargs = dict(img=pack(x_t.to(torch.bfloat16), p),
                      img_ids=image_position_ids(b, t_lat, h, w, p, device=device, dtype=torch.bfloat16),
                      txt=txt_all[idx], txt_ids=text_position_ids(b, txt_all.shape[1], device=device,
                                                                  dtype=torch.bfloat16),
                      timesteps=t.to(torch.bfloat16), y_vec=vec_all[idx],
                      cond=torch.zeros(b, (t_lat * h * w) // p**2, cfg.cond_channels, device=device,
                                       dtype=torch.bfloat16))
        with strategy.forward_context():
            loss = flow_matching_loss(model(**kwargs), pack(velocity_target(x0, noise), p))
        strategy.backward(loss, opt)
        norm = strategy.clip_grad_norm(model, 1.0)
        losses.append(float(loss.detach()))
        norms.append(float(norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        strategy.after_optimizer_step(model)
    seconds = time.time() - t0
    print(f"{recipe or 'bf16':10s} {args.steps} steps in {seconds:.1f}s: loss {np.mean(losses[:20]):.4f} -> "
          f"{np.mean(losses[-50:]):.4f}", flush=True)
    return dict(recipe=recipe or "bf16", strategy=name, losses=losses, grad_norms=norms, seconds=seconds)


def smooth(x, k):
    x = np.asarray(x, dtype=np.float64)
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[k:] - c[:-k]) / k


def train(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = torch.load(args.latents, weights_only=False)
    cfg = small_config()
    res = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "data": data["source"], "clips": len(data["names"]), "latent_shape": list(data["x0"].shape[1:]),
           "model": {k: v for k, v in cfg.to_dict().items() if k in ("hidden_size", "num_heads", "depth",
                                                                    "depth_single_blocks", "mlp_ratio")},
           "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "curves": []}
    try:
        import torchao

        res["torchao"] = torchao.__version__
    except Exception:  # noqa: BLE001
        res["torchao"] = None
    for recipe in [""] + [r for r in args.recipes.split(",") if r]:
        try:
            res["curves"].append(train_curve(data, recipe, args, device))
        except Exception as exc:  # noqa: BLE001 - keep the other curves
            res.setdefault("errors", []).append(f"{recipe}: {exc!r}"[:1000])
            print("FAILED", recipe, repr(exc)[:1000], flush=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    base = res["curves"][0]["losses"]
    k = args.smooth
    res["comparison"] = []
    for c in res["curves"][1:]:
        sb, sf = smooth(base, k), smooth(c["losses"], k)
        tail = min(100, len(base) // 3)
        res["comparison"].append(dict(
            recipe=c["recipe"], smoothing_steps=k,
            max_rel_diff_smoothed=float(np.max(np.abs(sf - sb) / sb)),
            mean_rel_diff_smoothed=float(np.mean(np.abs(sf - sb) / sb)),
            last_steps=tail, rel_diff_mean_of_last=float(abs(np.mean(c["losses"][-tail:]) - np.mean(base[-tail:]))
                                                        / np.mean(base[-tail:])),
            per_step_max_rel_diff=float(np.max(np.abs(np.array(c["losses"]) - np.array(base)) / np.array(base)))))
        print(res["comparison"][-1], flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        for c in res["curves"]:
            ax.plot(c["losses"], alpha=0.25, lw=0.8)
            ax.plot(np.arange(k - 1, len(c["losses"])), smooth(c["losses"], k), lw=1.6,
                    label=f"{c['recipe']} ({k}-step mean)", color=ax.lines[-1].get_color())
        for c in res["curves"][1:]:
            ax2.plot(np.arange(k - 1, len(base)), 100 * (smooth(c["losses"], k) - smooth(base, k)) / smooth(base, k),
                     label=c["recipe"])
        ax2.axhline(1, color="grey", ls=":")
        ax2.axhline(-1, color="grey", ls=":")
        ax.set_ylabel("flow-matching loss")
        ax2.set_ylabel("vs bf16, %")
        ax2.set_xlabel("step")
        ax.set_title(f"MMDiT width {cfg.hidden_size}, {cfg.depth}+{cfg.depth_single_blocks} blocks, "
                     f"{res['clips']} real clips, {res['device']}")
        ax.legend()
        ax2.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--stride", type=int, default=8)
    p.set_defaults(func=prepare)
    t = sub.add_parser("train")
    t.add_argument("--latents", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--png")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--recipes", default="tensorwise,rowwise")
    t.add_argument("--smooth", type=int, default=20)
    t.set_defaults(func=train)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
