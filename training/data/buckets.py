"""Multi-bucket assignment: resolution × length × aspect ratio (docs/models.md#buckets,
#motion-score-and-fps-in-captions, #training-stages).

`bucket_config = {res_name: {num_frames: (prob, batch_size) | ((p_keep, p_skip), batch_size)}}`, batch size per
data-parallel rank (per SP group when SP is on). A bucket id is `(res_name, num_frames, ratio)`; its shape
`(T, H, W)` comes from the training aspect-ratio table (`soraflow.models.aspect.training_aspect_ratios`).

Assignment of one row (deterministic in (seed, epoch, row index)):

* effective length `T_eff = num_frames // interval`, interval from the fps rule (`map_target_fps`);
* resolutions are tried from the largest pixel budget down; a resolution is skipped when `H·W < 0.8·budget`;
* an image (`T_eff == 1`, as released) goes to that resolution's `1` bucket with probability `p_keep`;
* a video scans that resolution's frame buckets (1 excluded) in descending order and takes the first with
  `T_eff >= t_bucket`; with a `(p_keep, p_skip)` tuple it first moves on to the next smaller qualifying length
  with probability `p_skip`; the chosen bucket is kept with probability `p_keep`;
* when no bucket is chosen (no qualifying length, or the keep draw failed) the row falls through to the next
  smaller resolution; after the smallest it is dropped for this epoch;
* the aspect ratio is the ratio of the resolution's table closest to `height/width`.

Every (resolution, length) bucket owns two fixed uniform draws per row, taken from one stream seeded by
(seed, epoch), so a row's draws depend only on (seed, epoch, row index, bucket config), never on the table size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from soraflow.models.aspect import height_over_width, num_pixels_from_name, training_aspect_ratios

__all__ = ["BucketId", "BucketConfig", "Assignment", "sampling_intervals", "APPROX_PIXELS"]

APPROX_PIXELS = 0.8  # a sample qualifies for a resolution when H·W >= 0.8 × its pixel budget


@dataclass(frozen=True, order=True)
class BucketId:
    resolution: str
    num_frames: int
    aspect_ratio: str
    height: int
    width: int

    @property
    def thw(self) -> tuple[int, int, int]:
        return self.num_frames, self.height, self.width

    def index_string(self, idx: int) -> str:
        """The dataset index for row `idx` in this bucket: "idx-T-H-W"."""
        return f"{idx}-{self.num_frames}-{self.height}-{self.width}"


def sampling_intervals(fps, fps_max: int = 24) -> np.ndarray:
    """Frame interval per row from the fps rule (docs/models.md#motion-score-and-fps-in-captions, `map_target_fps`);
    missing / non-positive fps gives 1."""
    from soraflow.models.text.captions import map_target_fps  # here: soraflow.models.text imports torch, config checks need not

    fps = np.asarray(fps, dtype=np.float64).reshape(-1)
    values, inverse = np.unique(fps, return_inverse=True)
    per_value = np.array([map_target_fps(float(f), fps_max)[1] if math.isfinite(f) and f > 0 else 1
                          for f in values], dtype=np.int64)
    return per_value[inverse.reshape(-1)] if len(values) else np.zeros(0, dtype=np.int64)


def _parse_prob(value, where: str) -> tuple[float, float, int | None]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"bucket_config[{where}] must be (prob, batch_size), got {value!r}")
    prob, bs = value
    if isinstance(prob, (tuple, list)):
        if len(prob) != 2:
            raise ValueError(f"bucket_config[{where}] prob tuple must be (p_keep, p_skip_to_next_length), got {prob!r}")
        p_keep, p_skip = float(prob[0]), float(prob[1])
    else:
        p_keep, p_skip = float(prob), 0.0
    for name, p in (("p_keep", p_keep), ("p_skip", p_skip)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"bucket_config[{where}] {name} must be in [0, 1], got {p}")
    if bs is not None:
        if int(bs) != bs or int(bs) < 1:
            raise ValueError(f"bucket_config[{where}] batch size must be a positive integer or None, got {bs!r}")
        bs = int(bs)
    if bs is None:  # Open-Sora's way to switch a bucket off
        p_keep = 0.0
    return p_keep, p_skip, bs


class BucketConfig:
    """Parsed `bucket_config` plus the training size tables; assigns rows to buckets."""

    def __init__(self, bucket_config: dict, divisor: int = 16, fps_max: int = 24):
        if not bucket_config:
            raise ValueError("bucket_config is empty")
        self.raw = {str(r): {int(t): v for t, v in lengths.items()} for r, lengths in bucket_config.items()}
        self.divisor = int(divisor)
        self.fps_max = int(fps_max)
        self.pixels = {r: num_pixels_from_name(r) for r in self.raw}
        # largest pixel budget first (stable for equal budgets: config order)
        self.resolutions = sorted(self.raw, key=lambda r: -self.pixels[r])
        self.ar_tables = {r: training_aspect_ratios(r, self.divisor) for r in self.resolutions}
        self.lengths: dict[str, list[int]] = {}
        self.p_keep: dict[tuple[str, int], float] = {}
        self.p_skip: dict[tuple[str, int], float] = {}
        self.batch_sizes: dict[tuple[str, int], int | None] = {}
        for r in self.resolutions:
            if not self.raw[r]:
                raise ValueError(f"bucket_config[{r!r}] has no frame buckets")
            self.lengths[r] = sorted(self.raw[r], reverse=True)
            for t in self.lengths[r]:
                if t < 1:
                    raise ValueError(f"bucket_config[{r!r}] frame bucket must be >= 1, got {t}")
                self.p_keep[r, t], self.p_skip[r, t], self.batch_sizes[r, t] = _parse_prob(self.raw[r][t], f"{r!r}][{t}")
        # two draw columns (keep, skip) per (resolution, length) bucket, in a fixed order
        self.columns = {(r, t): 2 * i for i, (r, t) in enumerate((r, t) for r in self.resolutions for t in self.lengths[r])}
        self.num_draws = 2 * len(self.columns)

    # -- bucket ids -----------------------------------------------------------------------------------------------
    def bucket_id(self, resolution: str, num_frames: int, aspect_ratio: str) -> BucketId:
        h, w = self.ar_tables[resolution][aspect_ratio]
        return BucketId(resolution, int(num_frames), aspect_ratio, h, w)

    def batch_size(self, bucket: BucketId | tuple) -> int:
        key = (bucket.resolution, bucket.num_frames) if isinstance(bucket, BucketId) else (bucket[0], int(bucket[1]))
        bs = self.batch_sizes[key]
        if bs is None:
            raise ValueError(f"bucket {key} is switched off (batch size None)")
        return bs

    def draws(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        """Uniform draws [num_rows, num_draws]; row i's values depend only on (seed, epoch, i)."""
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed), int(epoch), 0xB0C4E7])))
        return rng.random((int(num_rows), self.num_draws))

    # -- assignment -----------------------------------------------------------------------------------------------
    def assign(self, num_frames, height, width, fps, *, seed: int = 0, epoch: int = 0):
        """Vectorised assignment of every row. Returns `Assignment` (per-row resolution / length / ratio or -1)."""
        num_frames = np.asarray(num_frames, dtype=np.int64).reshape(-1)
        height = np.asarray(height, dtype=np.float64).reshape(-1)
        width = np.asarray(width, dtype=np.float64).reshape(-1)
        n = len(num_frames)
        if not (len(height) == len(width) == n and len(np.asarray(fps).reshape(-1)) == n):
            raise ValueError("num_frames, height, width and fps must have the same length")
        interval = sampling_intervals(fps, self.fps_max)
        t_eff = num_frames // interval
        # As released, "image" means one frame after the fps subsampling: a 2-frame clip at 30 fps (interval 2)
        # is an image sample, a 1-frame row with fps >= 2·fps_max (T_eff 0) fits no bucket.
        is_image = t_eff == 1
        hw = height * width
        u = self.draws(n, seed, epoch)

        res_idx = np.full(n, -1, dtype=np.int64)
        t_out = np.zeros(n, dtype=np.int64)
        open_ = np.ones(n, dtype=bool)
        for ri, r in enumerate(self.resolutions):
            here = open_ & (hw >= APPROX_PIXELS * self.pixels[r])
            if not here.any():
                continue
            chosen_t = np.zeros(n, dtype=np.int64)
            # images: the "1" bucket only
            if 1 in self.raw[r]:
                rows = here & is_image
                chosen_t[rows] = 1
            # videos: descending scan over lengths != 1
            scanning = here & ~is_image
            for t in self.lengths[r]:
                if t == 1:
                    continue
                col = self.columns[r, t]
                fits = scanning & (t_eff >= t)
                skip = fits & (u[:, col + 1] < self.p_skip[r, t])
                take = fits & ~skip
                chosen_t[take] = t
                scanning &= ~take
            for t in self.lengths[r]:
                rows = here & (chosen_t == t)
                if not rows.any():
                    continue
                keep = rows & (u[:, self.columns[r, t]] < self.p_keep[r, t])
                res_idx[keep] = ri
                t_out[keep] = t
                open_[keep] = False

        ar_idx = np.full(n, -1, dtype=np.int64)
        ratio_hw = np.divide(height, width, out=np.zeros(n), where=width > 0)
        for ri, r in enumerate(self.resolutions):
            rows = res_idx == ri
            if not rows.any():
                continue
            names = list(self.ar_tables[r])
            targets = np.array([height_over_width(a) for a in names])
            ar_idx[rows] = np.argmin(np.abs(ratio_hw[rows, None] - targets[None, :]), axis=1)  # ties: first name
        return Assignment(self, res_idx, t_out, ar_idx)


class Assignment:
    """Per-row bucket assignment of one epoch."""

    def __init__(self, config: BucketConfig, res_idx: np.ndarray, num_frames: np.ndarray, ar_idx: np.ndarray):
        self.config, self.res_idx, self.num_frames, self.ar_idx = config, res_idx, num_frames, ar_idx

    def __len__(self) -> int:
        return len(self.res_idx)

    def bucket_of(self, row: int) -> BucketId | None:
        ri = int(self.res_idx[row])
        if ri < 0:
            return None
        r = self.config.resolutions[ri]
        return self.config.bucket_id(r, int(self.num_frames[row]), list(self.config.ar_tables[r])[int(self.ar_idx[row])])

    def groups(self) -> dict[BucketId, list[int]]:
        """{bucket: [row indices ascending]} in canonical bucket order; dropped rows are left out."""
        out: dict[BucketId, list[int]] = {}
        kept = np.nonzero(self.res_idx >= 0)[0]
        if not len(kept):
            return out
        res, neg_t, ar = self.res_idx[kept], -self.num_frames[kept], self.ar_idx[kept]
        order = np.lexsort((kept, ar, neg_t, res))  # canonical bucket order, rows ascending inside a bucket
        kept, res, neg_t, ar = kept[order], res[order], neg_t[order], ar[order]
        cuts = np.nonzero((np.diff(res) != 0) | (np.diff(neg_t) != 0) | (np.diff(ar) != 0))[0] + 1
        for rows in np.split(kept, cuts):
            out[self.bucket_of(int(rows[0]))] = rows.tolist()
        return out

