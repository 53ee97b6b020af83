"""Held-out evaluation shared by the trainer (curves during training) and the eval step (the final numbers):
clips the model never trained on, read the same way every time, scored on fixed inputs.

* `load_heldout_clips`: the first `num_frames` frames of each clip of a held-out table, scaled to cover
  `height` x `width` and centre-cropped, rounded to uint8 (so PSNR compares exactly what was encoded), with the
  caption the training data loader would give the clip.
* `ae_heldout_metrics`: reconstruction PSNR / SSIM through the full encode (posterior sample with a fixed seed)
  and decode.
* `fm_heldout_loss`: the flow-matching loss on a fixed timestep grid with fixed noise per clip, text-to-video
  condition, no caption dropout. Two checkpoints scored with the same clips and autoencoder see identical inputs,
  so the numbers are comparable across stages and runs (a stage's step 0 equals the previous stage's end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Fixed grid (t = 1 is noise) and a fixed noise seed, so checkpoints are compared on identical inputs.
FM_T_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)
FM_NOISE_SEED = 1234
AE_SAMPLE_SEED = 4321


@dataclass
class HeldoutClip:
    path: str
    caption: str
    frames: np.ndarray  # uint8 [T, H, W, 3]

    def tensor(self, device, dtype) -> torch.Tensor:
        """[1, 3, T, H, W] in [-1, 1]."""
        x = torch.from_numpy(self.frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return x[None].to(device=device, dtype=dtype)


def load_heldout_clips(table, num_frames: int, height: int, width: int, max_clips: int | None = None,
                       fps_max: int = 24) -> list[HeldoutClip]:
    """Clips of a held-out clip table (columns: soraflow.common.clip_table); a clip too short or
    unreadable raises, naming the file: a held-out set is small and every clip of it must count."""
    from soraflow.training.data.dataset import make_caption
    from soraflow.common.clip_table import load_table

    df = load_table(table)
    if max_clips:
        df = df.iloc[:max_clips]
    if len(df) == 0:
        raise ValueError(f"held-out table {table}: no rows")
    clips = []
    for i, row in df.reset_index(drop=True).iterrows():
        path = str(row["path"])
        if int(row["num_frames"]) < num_frames:
            raise ValueError(f"held-out table {table}: row {i} ({path}) has {int(row['num_frames'])} frames, the "
                             f"held-out evaluation reads {num_frames}")
        u8 = load_clip_frames(path, num_frames, height, width)
        motion = row.get("score_vmafmotion") if "score_vmafmotion" in df.columns else None
        fps = float(row["fps"]) if row.get("fps") is not None and math.isfinite(float(row["fps"])) else None
        clips.append(HeldoutClip(path, make_caption(str(row.get("text") or ""), fps,
                                                    float(motion) if motion is not None else None, fps_max), u8))
    return clips


def load_clip_frames(path: str, num_frames: int, height: int, width: int) -> np.ndarray:
    """The first `num_frames` frames, scaled to cover height x width (bilinear, antialiased) and centre-cropped,
    rounded to uint8 [T, H, W, 3]: the held-out view of a clip, for the trainer and the eval step alike."""
    from soraflow.common.video_io import VideoReadError, read_video_frames
    from soraflow.training.data.dataset import resize_crop

    frames, _ = read_video_frames(path, list(range(num_frames)))
    if len(frames) < num_frames:
        raise VideoReadError(f"{path}: has {len(frames)} frames, the held-out evaluation reads {num_frames}")
    x = resize_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), height, width, "bilinear")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _psnr(ref: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def _encode(ae, video: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator(video.device).manual_seed(seed)
    return ae.encode(video, generator=gen)


@torch.no_grad()
def ae_heldout_metrics(ae, clips: list[HeldoutClip], device, dtype, with_ssim: bool = False,
                       first_index: int = 0) -> dict:
    """Mean PSNR (dB, over the whole clip's uint8 pixels) and optionally SSIM of decode(encode(clip)). Clip i
    (counting from `first_index`) is encoded with its own fixed posterior seed."""
    psnrs, ssims, recons = [], [], []
    for i, c in enumerate(clips, start=first_index):
        video = c.tensor(device, dtype)
        recon = ae.decode(_encode(ae, video, AE_SAMPLE_SEED + i))
        t, h, w = c.frames.shape[:3]
        rec = _to_uint8(recon[0, :, :t, :h, :w])
        recons.append(rec)
        psnrs.append(_psnr(c.frames, rec))
        if with_ssim:
            from skimage.metrics import structural_similarity

            ssims.append(float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255,
                                                              gaussian_weights=True, sigma=1.5,
                                                              use_sample_covariance=False)
                                        for a, b in zip(c.frames, rec)])))
    out = {"psnr": float(np.mean(psnrs)), "psnr_per_clip": psnrs, "n_clips": len(clips), "recons": recons}
    if with_ssim:
        out["ssim"] = float(np.mean(ssims))
    return out


class HeldoutLatents:
    """The held-out clips encoded once by a frozen autoencoder (a DiT stage never changes its AE), with each
    clip's fixed noise and its caption's text features: every later evaluation is one DiT forward per t."""

    def __init__(self, ae, text, clips: list[HeldoutClip], device, dtype, first_index: int = 0):
        from soraflow.models.flow import prepare_train_condition

        self.items = []
        with torch.no_grad():
            for i, c in enumerate(clips, start=first_index):
                video = c.tensor(device, dtype)
                gen = torch.Generator(device).manual_seed(FM_NOISE_SEED + i)
                cond = prepare_train_condition(ae, video, cond_types=["t2v"], generator=gen)
                x0 = cond.x0.float()
                noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(FM_NOISE_SEED + i))
                enc = text.encode([c.caption]) if c.caption else text.null()
                self.items.append({"x0": x0, "noise": noise.to(device), "cond": cond.cond,
                                   "txt": enc["txt"].to(device, dtype), "y_vec": enc["y_vec"].to(device, dtype)})
        self.device, self.dtype = device, dtype


@torch.no_grad()
def fm_heldout_loss(dit, latents: HeldoutLatents, t_grid=FM_T_GRID, config=None) -> dict:
    """Mean flow-matching MSE over clips for each t of the grid, and its mean over the grid. `config`: the
    MMDiT config when `dit` is a wrapper (DDP) without one."""
    from soraflow.models.flow import flow_matching_loss, noisy_latent, velocity_target
    from soraflow.models.packing import image_position_ids, pack, text_position_ids

    device, dtype = latents.device, latents.dtype
    cfg = config or dit.config
    p = cfg.patch_size
    was_training = dit.training
    dit.eval()
    per_t = {f"{t:g}": [] for t in t_grid}
    for it in latents.items:
        x0, noise = it["x0"], it["noise"]
        b, _, t_lat, h, w = x0.shape
        target = pack(velocity_target(x0, noise), p)
        for t in t_grid:
            tt = torch.full((b,), float(t), device=device)
            x_t = noisy_latent(x0, noise, tt)
            pred = dit(img=pack(x_t.to(dtype), p),
                       img_ids=image_position_ids(b, t_lat, h, w, p, device=device, dtype=dtype),
                       txt=it["txt"], txt_ids=text_position_ids(b, it["txt"].shape[1], device=device, dtype=dtype),
                       timesteps=tt.to(dtype), y_vec=it["y_vec"],
                       cond=pack(it["cond"].to(dtype), p) if cfg.cond_embed else None)
            per_t[f"{t:g}"].append(float(flow_matching_loss(pred, target)))
    dit.train(was_training)
    losses = {k: float(np.mean(v)) for k, v in per_t.items()}
    return {"fm_loss": losses, "fm_loss_mean": float(np.mean(list(losses.values()))),
            "n_clips": len(latents.items)}
