"""Held-out clips: autoencoder reconstruction PSNR/SSIM and the flow-matching loss on a fixed timestep grid.

`reference_clips` is a clip table (.csv/.parquet/.jsonl with a `path` column, optional `text`; relative paths
are resolved against the table's folder) or a folder of videos. A clip that cannot be read is reported with its
reason and the rest are still evaluated.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from common.video_io import VideoReadError, read_video
from . import metrics as M

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".avi", ".webm"}
# Fixed grid (t = 1 is noise) and a fixed noise seed, so checkpoints are compared on identical inputs.
FM_T_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)
FM_NOISE_SEED = 1234


def list_reference_clips(spec: str) -> list[dict]:
    p = Path(spec)
    if p.is_dir():
        return [{"path": str(f), "text": "", "caption": ""} for f in sorted(p.iterdir())
                if f.suffix.lower() in VIDEO_EXT]
    if not p.is_file():
        raise FileNotFoundError(f"reference clips {spec!r}: no such folder or clip table")
    from common.clip_table import read_table

    df = read_table(p)
    if "path" not in df.columns:
        raise ValueError(f"reference clips {p}: clip table has no 'path' column (columns: {list(df.columns)})")
    from training.data.dataset import make_caption

    rows = []
    for _, r in df.iterrows():
        path = Path(str(r["path"]))
        text = str(r["text"]) if "text" in df.columns and isinstance(r["text"], str) else ""
        fps = float(r["fps"]) if "fps" in df.columns and r["fps"] == r["fps"] else None
        motion = (float(r["score_vmafmotion"]) if "score_vmafmotion" in df.columns
                  and r["score_vmafmotion"] == r["score_vmafmotion"] else None)
        # the caption the training data loader gives this clip (fps and motion suffix), as the trainer scores it
        rows.append({"path": str(path if path.is_absolute() else p.parent / path), "text": text,
                     "caption": make_caption(text, fps, motion) if text else ""})
    return rows


def load_clip(path: str, num_frames: int, height: int, width: int) -> np.ndarray:
    """First `num_frames` frames, scaled to cover (height, width) and centre-cropped: uint8 [T, H, W, 3]."""
    frames, _ = read_video(path, num_frames=num_frames)
    if len(frames) < num_frames:
        raise VideoReadError(f"{path}: has {len(frames)} frames, the evaluation needs {num_frames}")
    h, w = frames.shape[1:3]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    top, left = (nh - height) // 2, (nw - width) // 2
    return np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)[top:top + height, left:left + width]
                     for f in frames])


def _to_tensor(frames: np.ndarray, device, dtype) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W] in [-1, 1]
    return x[None].to(device=device, dtype=dtype)


@torch.no_grad()
def evaluate_clip(pipe, frames: np.ndarray, caption: str, device, dtype, t_grid=FM_T_GRID) -> dict:
    """Reconstruction PSNR/SSIM through the pipeline's autoencoder and FM loss per t of the grid."""
    from common.video_io import to_uint8_frames
    from models.flow import noisy_latent, velocity_target, flow_matching_loss, prepare_train_condition
    from models.packing import image_position_ids, pack, text_position_ids

    video = _to_tensor(frames, device, dtype)
    gen = torch.Generator(device).manual_seed(FM_NOISE_SEED)
    cond = prepare_train_condition(pipe.ae, video, cond_types=["t2v"], generator=gen)
    recon = pipe.ae.decode(cond.x0.to(dtype))[0, :, : frames.shape[0], : frames.shape[1], : frames.shape[2]]
    rec = to_uint8_frames(recon)
    out = {"psnr": M.psnr(frames, rec), "ssim": M.video_ssim(frames, rec)}

    dit, p = pipe.dit, pipe.dit.config.patch_size
    x0 = cond.x0.float()
    b, _, t_lat, h, w = x0.shape
    text = pipe.text.encode([caption]) if caption else pipe.text.null()
    txt = text["txt"].to(device, dtype)
    y_vec = text["y_vec"].to(device, dtype)
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(FM_NOISE_SEED)).to(device)
    losses = {}
    for t in t_grid:
        tt = torch.full((b,), float(t), device=device)
        x_t = noisy_latent(x0, noise, tt)
        pred = dit(img=pack(x_t.to(dtype), p), img_ids=image_position_ids(b, t_lat, h, w, p, device=device, dtype=dtype),
                   txt=txt, txt_ids=text_position_ids(b, txt.shape[1], device=device, dtype=dtype),
                   timesteps=tt.to(dtype), y_vec=y_vec,
                   cond=pack(cond.cond.to(dtype), p) if dit.config.cond_embed else None)
        losses[f"{t:g}"] = float(flow_matching_loss(pred, pack(velocity_target(x0, noise), p)))
    out["fm_loss"] = losses
    out["fm_loss_mean"] = float(np.mean(list(losses.values())))
    return out
