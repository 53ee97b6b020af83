"""Linear baselines for the tiny autoencoders' held-out PSNR: PCA of the training clips' pixel blocks, with as
many components per block as the autoencoder has latent channels per latent position.

    python benchmarks/ae_pca_baseline.py SPLIT_DIR [OUT_JSON]

SPLIT_DIR: the split step's output (`set_256px.parquet`, `heldout.parquet`). Clips are read exactly like the
held-out evaluation reads them (training/heldout.py: scaled to cover 64x64, centre-cropped, uint8), training
clips in full. Blocks: the HunyuanVideo VAE's 4x8x8 (its causal first frame as a 1x8x8 block with its own
PCA, like the VAE encodes it alone) with 16 components; the Video DC-AE's 4x32x32 with 8 (the tiny config),
16, 32, 64 and 128 (the released model's latent channels). Also the area-downsample + bilinear-upsample blurs.
PSNR as in training/heldout.py (uint8 pixels, mean over clips)."""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from soraflow.common.clip_table import load_table  # noqa: E402
from soraflow.training.heldout import load_clip_frames  # noqa: E402


def psnr(a, b):
    return 10 * math.log10(255.0 ** 2 / float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def blocks(v, t, s):
    """[T, H, W, 3] -> [N, t*s*s*3], T cut to a multiple of t."""
    T, H, W, C = v.shape
    v = v[:T // t * t].reshape(T // t, t, H // s, s, W // s, s, C).transpose(0, 2, 4, 1, 3, 5, 6)
    return v.reshape(-1, t * s * s * C)


def unblocks(b, T, H, W, t, s):
    return b.reshape(T // t, H // s, W // s, t, s, s, 3).transpose(0, 3, 1, 4, 2, 5, 6).reshape(T, H, W, 3)


def pca(X, k):
    """Mean and the top-k principal directions (through the Gram matrix when there are fewer rows than dims)."""
    mu = X.mean(0)
    Y = (X - mu).astype(np.float64)
    if Y.shape[0] < Y.shape[1]:
        w, U = np.linalg.eigh(Y @ Y.T)
        V = (Y.T @ U[:, np.argsort(w)[::-1][:k]]).T
    else:
        w, U = np.linalg.eigh(Y.T @ Y)
        V = U[:, np.argsort(w)[::-1][:k]].T
    return mu, V / np.linalg.norm(V, axis=1, keepdims=True)


def project(X, mu, V):
    return (X - mu) @ V.T @ V + mu


def main(split, out):
    train = [load_clip_frames(str(r["path"]), int(r["num_frames"]), 64, 64).astype(np.float32)
             for _, r in load_table(os.path.join(split, "set_256px.parquet")).iterrows()]
    held = load_table(os.path.join(split, "heldout.parquet"))
    ho9 = [load_clip_frames(str(p), 9, 64, 64) for p in held.path]
    ho8 = [load_clip_frames(str(p), 8, 64, 64) for p in held.path]
    res = {}
    # HunyuanVideo VAE: frame 0 alone (1x8x8), then 4x8x8 groups, 16 components each
    mu1, V1 = pca(np.concatenate([blocks(v, 1, 8) for v in train]), 16)
    mu4, V4 = pca(np.concatenate([blocks(v[1:], 4, 8) for v in train]), 16)
    ps = []
    for h in ho9:
        hf = h.astype(np.float32)
        r = np.concatenate([unblocks(project(blocks(hf[:1], 1, 8), mu1, V1), 1, 64, 64, 1, 8),
                            unblocks(project(blocks(hf[1:], 4, 8), mu4, V4), 8, 64, 64, 4, 8)])
        ps.append(psnr(h, np.clip(np.round(r), 0, 255)))
    res["pca_hunyuan_4x8x8_16"] = {"psnr": float(np.mean(ps)), "psnr_per_clip": ps}
    # Video DC-AE: 4x32x32 blocks of the 8-frame held-out view
    X = np.concatenate([blocks(v, 4, 32) for v in train])
    mu, V = pca(X, 128)
    for k in (8, 16, 32, 64, 128):
        ps = [psnr(h, np.clip(np.round(unblocks(project(blocks(h.astype(np.float32), 4, 32), mu, V[:k]),
                                                 8, 64, 64, 4, 32)), 0, 255)) for h in ho8]
        res[f"pca_dcae_4x32x32_{k}"] = {"psnr": float(np.mean(ps)), "psnr_per_clip": ps}
    for f in (4, 8, 32):
        ps = []
        for h in ho9:
            x = torch.from_numpy(h).permute(0, 3, 1, 2).float()
            y = F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode="bilinear", align_corners=False)
            ps.append(psnr(h, y.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()))
        res[f"blur_x{f}"] = {"psnr": float(np.mean(ps)), "psnr_per_clip": ps}
    res["n_train_clips"] = len(train)
    res["n_heldout_clips"] = len(ho9)
    text = json.dumps(res, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
