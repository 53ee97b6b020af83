"""The one home of video I/O in soraflow: probe, decode and encode, through PyAV.

Every step (ingest, filter, training data, generate, eval) reads and writes video through these functions.
Writes go to a temporary name in the target folder and are renamed into place, so a crash never leaves a
half-written file under the final name. Everything runs on the FFmpeg libraries inside PyAV's wheel (decoders,
libx264, the `scdet` filter, crop/scale): no system ffmpeg binary and no subprocess.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import av.filter
import numpy as np

from soraflow.common.atomic import atomic_path

# libx264 picks its thread count from the machine's cores, and the bitstream depends on that count; a fixed
# count makes the same frames give the same bytes on any machine (x264 is deterministic for a fixed count).
ENCODER_THREADS = 2


class VideoReadError(ValueError):
    """A file that is not a readable video; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    duration: float
    codec: str
    profile: str | None
    pix_fmt: str | None
    bit_rate: int | None



def _require_nonempty_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes)")


def _decoding_stream(container, path: str):
    """The first video stream, set up for threaded decoding; a file without one is a VideoReadError."""
    if not container.streams.video:
        raise VideoReadError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream

def probe_video(path: str | Path, count_frames: bool = False) -> VideoInfo:
    """Stream metadata of the first video stream. `count_frames` decodes packets when the header has no count."""
    path = str(path)
    _require_nonempty_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            duration = (
                float(stream.duration * stream.time_base)
                if stream.duration is not None and stream.time_base is not None
                else (container.duration / av.time_base if container.duration else 0.0)
            )
            n = stream.frames
            if (not n or count_frames) and count_frames:
                n = sum(1 for _ in container.demux(stream) if _.size)
            if not n:
                n = int(round(duration * fps))
            return VideoInfo(
                path=path,
                num_frames=int(n),
                fps=fps,
                height=int(ctx.height),
                width=int(ctx.width),
                duration=duration,
                codec=ctx.name,
                profile=getattr(ctx, "profile", None),
                pix_fmt=getattr(ctx, "pix_fmt", None) or (ctx.format.name if ctx.format else None),
                bit_rate=int(stream.bit_rate or container.bit_rate or 0) or None,
            )
    except VideoReadError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoReadError(f"{path}: not a readable video ({exc})") from exc


def read_video(path: str | Path, start: int = 0, num_frames: int | None = None, step: int = 1) -> tuple[np.ndarray, float]:
    """Decode frames [start, start + num_frames*step) every `step` as uint8 RGB [T, H, W, 3]; returns (frames, fps)."""
    path = str(path)
    frames = []
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            for i, frame in enumerate(container.decode(stream)):
                if i < start or (i - start) % step:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                if num_frames is not None and len(frames) >= num_frames:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise VideoReadError(f"{path}: decoding failed ({exc})") from exc
    if not frames:
        raise VideoReadError(f"{path}: no frames decoded (start={start}, step={step})")
    return np.stack(frames), fps


def read_video_frames(path: str | Path, indices) -> tuple[np.ndarray, float]:
    """Decode only the frames at `indices` (0-based decode order, any order, repeats allowed) as uint8 RGB
    [len(indices), H, W, 3]; returns (frames, fps). Decoding stops after the largest index and only the wanted
    frames are converted to RGB. Asking for a frame past the end raises `VideoReadError`, whose `num_frames`
    attribute holds the number of frames the file really has."""
    path = str(path)
    wanted = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not wanted:
        raise ValueError("read_video_frames needs at least one frame index")
    if min(wanted) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(wanted)}")
    _require_nonempty_file(path)
    need = set(wanted)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(path) as container:
            stream = _decoding_stream(container, path)
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            for i, frame in enumerate(container.decode(stream)):
                count = i + 1
                if i in need:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except VideoReadError:
        raise
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise VideoReadError(f"{path}: decoding failed ({exc})") from exc
    if len(got) < len(need):
        err = VideoReadError(f"{path}: asked for frame {last} but the file has {count} decodable frames")
        err.num_frames = count
        raise err
    return np.stack([got[i] for i in wanted]), fps


@dataclass(frozen=True)
class LumaFrame:
    """One decoded frame of `iter_luma_frames`: its index in decode order, the luma plane (uint8 for 8-bit
    video, uint16 holding the 10-bit values otherwise; a view, copy it to keep it), its bit depth, and the RGB
    frame when it was asked for."""

    index: int
    luma: np.ndarray
    bit_depth: int
    rgb: np.ndarray | None


def _luma_plane(frame) -> tuple[np.ndarray, int]:
    """The Y plane without a colour conversion for planar YUV / NV12 (what ffmpeg's luma filters read);
    other formats are converted to 8-bit grey."""
    name = frame.format.name
    if name.startswith(("yuv", "yuvj", "nv12", "nv21")) and not name.startswith(("yuva", "yuyv", "uyvy")):
        plane = frame.planes[0]
        if name.endswith(("p10le", "p10")):
            arr = np.frombuffer(plane, np.uint16).reshape(plane.height, plane.line_size // 2)
            return arr[:, : frame.width], 10
        if "p1" not in name and "p9" not in name:  # 8-bit layouts only; 9/12/16-bit fall through to grey
            arr = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            return arr[:, : frame.width], 8
    return frame.to_ndarray(format="gray"), 8


def iter_luma_frames(path: str | Path, rgb_indices=()) -> Iterator[LumaFrame]:
    """Decode every frame of the first video stream once, in order, yielding its luma plane, plus the RGB
    frame for the indices in `rgb_indices`. One pass serves scorers that need every frame's luma (VMAF motion)
    and scorers that need a few RGB frames (blur, hashes). Decoder errors raise `VideoReadError` naming the
    file and the frame reached."""
    path = str(path)
    _require_nonempty_file(path)
    want = {int(i) for i in rgb_indices}
    i = -1
    try:
        with av.open(path) as container:
            stream = _decoding_stream(container, path)
            for i, frame in enumerate(container.decode(stream)):
                luma, bits = _luma_plane(frame)
                yield LumaFrame(i, luma, bits, frame.to_ndarray(format="rgb24") if i in want else None)
    except VideoReadError:
        raise
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise VideoReadError(f"{path}: decoding failed after {i + 1} frames ({exc})") from exc


def to_uint8_frames(video) -> np.ndarray:
    """A [3, T, H, W] tensor/array in [-1, 1] -> uint8 [T, H, W, 3].

    A tensor is converted where it lives (on the GPU for generated videos) and only the uint8 frames cross to
    the host: 4x fewer bytes than float32, and no float passes over ~1 GB on the CPU for a 768px video."""
    if tuple(video.shape[:1]) != (3,) or len(video.shape) != 4:
        raise ValueError(f"expected a [3, T, H, W] video in [-1, 1], got shape {tuple(video.shape)}")
    if hasattr(video, "detach"):
        frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
        return frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()
    arr = ((np.asarray(video, dtype=np.float32).clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(1, 2, 3, 0))


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18, codec: str = "libx264") -> Path:
    """Encode uint8 RGB frames [T, H, W, 3] as H.264 (yuv420p, even sizes) and rename into place."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video expects uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {h}x{w}")
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".mp4") as tmp, av.open(tmp, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium", "threads": str(ENCODER_THREADS)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- analysis and re-encoding in one decoding pass (PyAV's bundled FFmpeg: scdet, crop/scale, libx264) -----------

# What ingest needs from the FFmpeg build inside PyAV's wheel. Checked once at the start of a step, so a build
# without one of them is one clear error, not every source rejected as "broken".
REQUIRED_CODECS = {"h264": "decode", "libx264": "encode"}
REQUIRED_FILTERS = ("scdet", "crop", "scale", "setsar", "format", "buffer", "buffersink")

class VideoBackendError(RuntimeError):
    """The video library cannot do what a step needs (missing, or built without a codec/filter)."""


def check_video_backend(encode: bool = True) -> str:
    """Raise `VideoBackendError` naming what is missing from PyAV's FFmpeg (the H.264 decoder, and with
    `encode` libx264 and the filters ingest uses); return a one-line description of the backend."""
    missing = []
    for name, mode in REQUIRED_CODECS.items():
        if mode == "encode" and not encode:
            continue
        try:
            av.codec.Codec(name, "w" if mode == "encode" else "r")
        except Exception:  # UnknownCodecError, or a build without it
            missing.append(f"{mode}r {name}")
    have = av.filter.filters_available
    missing += [f"filter {f}" for f in (REQUIRED_FILTERS if encode else ()) if f not in have]
    if missing:
        raise VideoBackendError(
            f"PyAV {av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}) lacks {', '.join(missing)}; "
            f"install the PyPI wheel the project pins (`pip install -e .` or `pip install av==<pinned version>`), "
            f"whose bundled FFmpeg has them")
    return f"PyAV {av.__version__}, FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}"


def content_box(luma: np.ndarray, limit: float, bit_depth: int = 8) -> tuple[int, int, int, int]:
    """(x1, x2, y1, y2), inclusive, of the rows and columns whose mean luma is above `limit` (an 8-bit value;
    scaled for 10-bit frames): the non-black content, as ffmpeg's cropdetect measures a line. A frame with no
    such line gives (0, -1, 0, -1)."""
    thr = float(limit) * (1 << (bit_depth - 8))
    rows = np.flatnonzero(luma.mean(axis=1, dtype=np.float64) > thr)
    cols = np.flatnonzero(luma.mean(axis=0, dtype=np.float64) > thr)
    if rows.size == 0 or cols.size == 0:
        return (0, -1, 0, -1)
    return (int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1]))


@dataclass
class ScannedFrame:
    """One decoded frame of `scan_frames`: index in decode order, presentation time (s), scene score (ffmpeg's
    `scdet`, 0-100), non-black content box (x1, x2, y1, y2, inclusive) and the decoded frame itself (PyAV), so
    a caller can re-encode it without decoding the file again."""

    index: int
    time: float
    scene_score: float
    box: tuple[int, int, int, int]
    frame: "av.VideoFrame"


def _drain(graph) -> list:
    out = []
    while True:
        try:
            out.append(graph.vpull())
        except (av.error.BlockingIOError, av.error.EOFError):
            return out


def scan_frames(path: str | Path, crop_limit: int = 24) -> Iterator[ScannedFrame]:
    """Decode the first video stream once, yielding every frame with its scene score and content box.

    Scene scores come from FFmpeg's own `scdet` filter run on the decoded frames (in process, no second
    decode); content boxes from the frame's luma (`content_box`). Decoder errors raise `VideoReadError`
    naming the file and the frame reached; a caller that wants to judge a truncated file by how far it got
    catches it."""
    path = str(path)
    _require_nonempty_file(path)
    i = -1
    try:
        with av.open(path) as container:
            stream = _decoding_stream(container, path)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            step = 1.0 / float(rate) if rate else 0.0
            graph = av.filter.Graph()
            src = graph.add_buffer(template=stream)
            scd = graph.add("scdet", "threshold=100:sc_pass=0")
            sink = graph.add("buffersink")
            src.link_to(scd)
            scd.link_to(sink)
            graph.configure()
            pending: list = []  # frames pushed into scdet, awaiting their score (it returns them in order)

            def emit(scored):
                for out in scored:
                    frame = pending.pop(0)
                    luma, bits = _luma_plane(frame[1])
                    score = float(out.metadata.get("lavfi.scd.score", 0.0))
                    yield ScannedFrame(frame[0], frame[2], score, content_box(luma, crop_limit, bits), frame[1])

            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i * step
                pending.append((i, frame, t))
                graph.vpush(frame)
                yield from emit(_drain(graph))
            graph.vpush(None)
            yield from emit(_drain(graph))
    except VideoReadError:
        raise
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise VideoReadError(f"{path}: decoding failed after {i + 1} frames ({exc})") from exc


def even_size_within(width: int, height: int, max_long_side: int) -> tuple[int, int]:
    """The even (width, height) after scaling so the long side is at most `max_long_side`, keeping the aspect
    ratio (never upscaling)."""
    m = int(max_long_side) // 2 * 2
    long_side = max(width, height)
    if long_side > m:
        s = m / long_side
        width, height = (m, int(round(height * s / 2)) * 2) if width >= height else (int(round(width * s / 2)) * 2, m)
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


def constant_rate_frames(times: list[float], start: float, end: float, fps: Fraction) -> list[int]:
    """Resample a frame sequence to a constant `fps` over [start, end): for each output slot k (time
    start + k/fps), the index of the input frame shown at that time: the last one whose time, rounded to the
    nearest slot, is <= k. Frames between slots are dropped, gaps are filled by repeating."""
    rate = float(fps)
    n_out = max(1, int(round((end - start) * rate)))
    # half rounds up (FFmpeg's fps filter rounds to the nearest, ties away from zero); the epsilon keeps float
    # error in times such as 1/30 from turning a tie into a round-down
    slots = [math.floor((t - start) * rate + 0.5 + 1e-6) for t in times]
    out, j = [], 0
    for k in range(n_out):
        while j + 1 < len(times) and slots[j + 1] <= k:
            j += 1
        out.append(j)
    return out


def write_clip(path: str | Path, frames: list, times: list[float], start: float, end: float, *, fps: Fraction,
               crop: tuple[int, int, int, int] | None = None, max_long_side: int = 1080, crf: int = 18,
               preset: str = "veryfast") -> tuple[int, int, int]:
    """Encode decoded PyAV frames (shown at `times`) covering [start, end) as an H.264 (High, yuv420p, no
    audio, faststart) MP4: resampled to constant `fps`, cropped to (w, h, x, y), scaled so the long side is at
    most `max_long_side` with even sizes, square pixels. Written to a temporary name and renamed. Returns
    (num_frames, height, width) of what was written."""
    if not frames:
        raise ValueError(f"{path}: no frames to encode")
    first = frames[0]
    cw, ch = (crop[0], crop[1]) if crop else (first.width, first.height)
    ow, oh = even_size_within(cw, ch, max_long_side)
    fps = Fraction(fps).limit_denominator(1001)
    tb = 1 / fps
    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=first.width, height=first.height, format=first.format.name, time_base=tb)]
    if crop:
        chain.append(graph.add("crop", "{}:{}:{}:{}".format(*crop)))
    chain += [graph.add("scale", f"{ow}:{oh}"), graph.add("setsar", "1"), graph.add("format", "yuv420p"),
              graph.add("buffersink")]
    for a, b in zip(chain[:-1], chain[1:]):
        a.link_to(b)
    graph.configure()
    picks = constant_rate_frames(times, start, end, fps)
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".mp4") as tmp:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = ow, oh, "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset, "profile": "high", "threads": str(ENCODER_THREADS)}

            def encode(out_frames):
                for f in out_frames:
                    for packet in stream.encode(f):
                        container.mux(packet)

            for k, j in enumerate(picks):
                frame = frames[j]
                frame.pts, frame.time_base = k, tb
                graph.vpush(frame)
                encode(_drain(graph))
            graph.vpush(None)
            encode(_drain(graph))
            for packet in stream.encode():
                container.mux(packet)
    return len(picks), oh, ow
