"""The DiT flow-matching objective on a batch of pixels + captions
(docs/models.md#flow-matching-objective, #timesteps-and-shift, #condition-dropout, #visual-conditions-in-training).

Frozen parts run without gradients: the full autoencoder encode (encoder, quant conv, posterior sample, scale;
never the raw encoder, docs/models.md#hunyuanvideo-vae), the visual condition, T5/CLIP with condition dropout. Then x_t
and the
velocity target, the DiT forward on packed tokens, and the MSE in fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from soraflow.models.flow import (
    draw_train_noise,
    flow_matching_loss,
    inference_shift_alpha,
    noisy_latent,
    prepare_train_condition,
    sample_train_timesteps,
    velocity_target,
)
from soraflow.models.packing import image_position_ids, pack, text_position_ids
from soraflow.models.text import dropout_condition


@dataclass
class StepInputs:
    """What the DiT sees for one micro-batch (packed), and the target."""

    kwargs: dict
    target: torch.Tensor
    tokens: int  # image + text tokens in the micro-batch (for tokens/s and MFU)


class DiTObjective:
    def __init__(self, ae, text, *, patch_size: int, cond_embed: bool, condition_config: dict | None,
                 dropout_ratio: float, dtype: torch.dtype, seq_align: int = 1):
        self.ae, self.text = ae, text
        self.p = patch_size
        self.cond_embed = cond_embed
        self.condition_config = condition_config or {"t2v": 1}
        self.dropout_ratio = dropout_ratio
        self.dtype = dtype
        self.seq_align = seq_align
        self.last_alpha: float | None = None  # the shift α of the last prepared batch (tests compare it)
        self.last_timing: dict = {}  # ae_encode_s / text_encode_s of the last prepared batch

    @torch.no_grad()
    def prepare(self, video: torch.Tensor, captions: list[str], generator: torch.Generator) -> StepInputs:
        b = video.shape[0]
        weights = self.condition_config if self.cond_embed else {"t2v": 1}
        t0 = _synced_clock(video.device)
        cond = prepare_train_condition(self.ae, video.to(self.dtype), weights=weights, generator=generator)
        x0 = cond.x0.float()
        t_lat, h, w = x0.shape[2:]
        t1 = _synced_clock(video.device)

        text = self.text.encode(captions, seq_align=self.seq_align)
        null = self.text.null(batch_size=b, length=text["txt"].shape[1])
        dropped = dropout_condition(text["txt"], text["y_vec"], null["txt"], null["y_vec"], p=self.dropout_ratio,
                                    generator=_cpu_generator(generator))
        txt = dropped["txt"].to(x0.device, self.dtype)
        y_vec = dropped["y_vec"].to(x0.device, self.dtype)
        # seconds of the frozen encoders inside the step (the GPU is drained at each mark, so they are exact)
        self.last_timing = {"ae_encode_s": t1 - t0, "text_encode_s": _synced_clock(video.device) - t1}

        # α from the tokens the DiT really sees, by the function the sampler uses (`sample` calls
        # inference_shift_alpha too). Upstream trains with (H·W)//4 whatever the patch size, which for the
        # patch-1 DC-AE model disagrees with its sampler (docs/models.md#timesteps-and-shift); for patch 2 both are the
        # same number.
        self.last_alpha = inference_shift_alpha(x0.shape, self.p)
        # t in the training dtype, as released: bf16 training sees bf16-rounded t, fp32 training the fp32 value.
        t = sample_train_timesteps(b, self.last_alpha, generator=generator, device=x0.device, dtype=self.dtype)
        # Noise drawn in fp32 and cast to the training dtype, as the reference does
        # (docs/models.md#flow-matching-objective).
        noise = draw_train_noise(x0.shape, generator=generator, device=x0.device, dtype=self.dtype).float()
        x_t = noisy_latent(x0, noise, t.float())
        target = velocity_target(x0, noise)
        img = pack(x_t.to(self.dtype), self.p)
        kwargs = dict(
            img=img,
            img_ids=image_position_ids(b, t_lat, h, w, self.p, device=x0.device, dtype=self.dtype),
            txt=txt,
            txt_ids=text_position_ids(b, txt.shape[1], device=x0.device, dtype=self.dtype),
            timesteps=t.to(self.dtype),
            y_vec=y_vec,
            cond=pack(cond.cond.to(self.dtype), self.p) if self.cond_embed else None,
        )
        return StepInputs(kwargs, pack(target, self.p), tokens=b * (img.shape[1] + txt.shape[1]))

    @staticmethod
    def loss(model, inputs: StepInputs) -> torch.Tensor:
        pred = model(**inputs.kwargs)
        return flow_matching_loss(pred, inputs.target)


def _synced_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _cpu_generator(gen: torch.Generator) -> torch.Generator:
    """Dropout draws come from a CPU generator derived from the step generator (reproducible on any device)."""
    if gen.device.type == "cpu":
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
    return torch.Generator().manual_seed(seed)
