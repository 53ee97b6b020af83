"""The optimizer's settings, apart from the strategies (training/strategies.py) so that resolving a config -
what every launcher and pipeline task does before a trainer starts - does not import torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-15
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0  # linear warmup from warmup_start_lr over this many updates (0 = none, the recipes')
    warmup_start_lr: float = 1e-6
    # piecewise-constant schedule after warmup: ((step, lr), ...), e.g. the paper's ((40_000, 3e-5),)
    lr_milestones: tuple[tuple[int, float], ...] = ()

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0-based). Warmup follows Open-Sora's LinearWarmupLR:
        start + (step + 1) / (warmup + 1) * (lr - start) while step < warmup; then `lr`, replaced by the lr of
        the last milestone whose step has been reached."""
        if step < self.warmup_steps:
            return self.warmup_start_lr + (step + 1) / (self.warmup_steps + 1) * (self.lr - self.warmup_start_lr)
        lr = self.lr
        for at, value in self.lr_milestones:
            if step >= at:
                lr = value
        return lr
