"""The Open-Sora 2.0 MMDiT (docs/models.md#mmdit-forward-pass): FLUX-style double/single-stream transformer with 3D
RoPE and I2V cond."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import MMDiTConfig, get_config
from .layers import (DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, linear_k_aligned,
                     timestep_embedding)
from .rope import rope_tables


class MMDiT(nn.Module):
    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = c = config
        d = c.hidden_size
        self.img_in = nn.Linear(c.in_channels, d)
        self.time_in = MLPEmbedder(256, d)
        self.vector_in = MLPEmbedder(c.vec_in_dim, d)
        self.guidance_in = MLPEmbedder(256, d) if c.guidance_embed else None
        self.cond_in = nn.Linear(c.cond_channels, d) if c.cond_embed else None
        self.txt_in = nn.Linear(c.context_in_dim, d)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(d, c.num_heads, c.mlp_hidden_dim, c.qkv_bias, c.rope_layout) for _ in range(c.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(d, c.num_heads, c.mlp_hidden_dim, c.rope_layout) for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(d, c.out_channels)
        self.zero_init_cond()

    @classmethod
    def from_name(cls, name: str, **overrides) -> "MMDiT":
        return cls(get_config(name, **overrides))

    def zero_init_cond(self) -> None:
        """cond_in starts at zero so a fresh model is exactly the text-to-video model
        (docs/models.md#mmdit-initialisation-from-flux)."""
        if self.cond_in is not None and not self.cond_in.weight.is_meta:
            nn.init.zeros_(self.cond_in.weight)
            nn.init.zeros_(self.cond_in.bias)

    def _check_inputs(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond):
        c = self.config
        b, l_img = img.shape[:2]
        problems = []
        if img.ndim != 3 or img.shape[-1] != c.in_channels:
            problems.append(f"img must be [B, L, {c.in_channels}] packed tokens, got {tuple(img.shape)}")
        if img_ids.shape != (b, l_img, 3):
            problems.append(f"img_ids must be [{b}, {l_img}, 3], got {tuple(img_ids.shape)}")
        if txt.ndim != 3 or txt.shape[0] != b or txt.shape[-1] != c.context_in_dim:
            problems.append(f"txt must be [{b}, L_txt, {c.context_in_dim}], got {tuple(txt.shape)}")
        elif txt_ids.shape != (b, txt.shape[1], 3):
            problems.append(f"txt_ids must be [{b}, {txt.shape[1]}, 3], got {tuple(txt_ids.shape)}")
        if timesteps.shape != (b,):
            problems.append(f"timesteps must be [{b}], got {tuple(timesteps.shape)}")
        if y_vec.shape != (b, c.vec_in_dim):
            problems.append(f"y_vec must be [{b}, {c.vec_in_dim}], got {tuple(y_vec.shape)}")
        if cond is not None and self.cond_in is not None and cond.shape != (b, l_img, c.cond_channels):
            problems.append(f"cond must be [{b}, {l_img}, {c.cond_channels}], got {tuple(cond.shape)}")
        if problems:
            raise ValueError("MMDiT input mismatch (config " + c.name + "): " + "; ".join(problems))

    def prepare_block_inputs(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None):
        """Embeds inputs; returns (img, txt, vec, pe) ready for the blocks (docs/models.md#mmdit-forward-pass, step
        3)."""
        self._check_inputs(img, img_ids, txt, txt_ids, timesteps, y_vec, cond)
        img = self.img_in(img)
        if self.cond_in is not None and cond is not None:
            img = img + linear_k_aligned(cond, self.cond_in)
        dtype = img.dtype
        vec = self.time_in(timestep_embedding(timesteps).to(dtype))
        if self.guidance_in is not None:
            if guidance is None:
                raise ValueError(f"config {self.config.name} embeds guidance: pass `guidance` [B]")
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(dtype))
        vec = vec + self.vector_in(y_vec)
        txt = self.txt_in(txt)
        ids = torch.cat((txt_ids, img_ids), dim=1)
        pe = rope_tables(ids, self.config.axes_dim, self.config.theta, self.config.rope_layout)
        return img, txt, vec, pe

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None):
        """Packed noisy latent -> packed velocity [B, L_img, out_channels]."""
        img, txt, vec, pe = self.prepare_block_inputs(img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance)
        x = self.forward_blocks(img, txt, vec, pe)
        return self.final_layer(x[:, txt.shape[1] :], vec)

    def forward_blocks(self, img, txt, vec, pe, attn_fn=None):
        """Double then single blocks (docs/models.md#mmdit-forward-pass, step 4); returns the joint sequence [B, L_txt
        + L_img, d], text
        first. `attn_fn` replaces `attention.attention` in every block (sequence parallelism installs one)."""
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe, attn_fn=attn_fn)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, pe, attn_fn=attn_fn)
        return x

    def fuse_projections(self) -> "MMDiT":
        """Inference fast path: q/k/v (and the single blocks' v_mlp) as one GEMM each. Call after the model is
        on its final device and dtype; moving it again falls back to the separate projections."""
        for block in self.double_blocks:
            block.img_attn.fuse_projections()
            block.txt_attn.fuse_projections()
            block.gelu_epilogue = True
        for block in self.single_blocks:
            block.fuse_projections()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_forward(self, n_img: int, n_txt: int, batch: int = 1) -> float:
        return mmdit_forward_flops(self.config, n_img, n_txt, batch)


def mmdit_forward_flops(config: MMDiTConfig, n_img: int, n_txt: int, batch: int = 1) -> float:
    """Forward FLOPs of the blocks (docs/models.md#mmdit-flops): per block 2*N*12*d^2 (projections + MLP: every token
    meets
    12 d^2 weights in both block kinds) + 4*N^2*d (QK^T and PV). Embedders and the final layer are < 0.1%."""
    n = n_img + n_txt
    d = config.hidden_size
    per_block = 2 * n * (4 + 2 * config.mlp_ratio) * d * d + 4 * n * n * d
    return float(batch * (config.depth + config.depth_single_blocks) * per_block)
