"""The one home of video I/O in soraflow: probe, decode and encode, through PyAV.

Every step (ingest, filter, training data, generate, eval) reads and writes video through these functions.
Writes go to a temporary name in the target folder and are renamed into place, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from common.atomic import atomic_path


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
            stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- ffmpeg-based analysis and transcoding (Debian ffmpeg: scdet, cropdetect, libx264) ---------------------------

@dataclass(frozen=True)
class FrameScan:
    """One decoded frame's analysis: index in decode order, time, scene score (scdet, 0-100) and the bounding box
    of non-black content found by cropdetect (inclusive pixel coordinates)."""

    index: int
    pts_time: float
    scene_score: float
    x1: int
    x2: int
    y1: int
    y2: int


@dataclass(frozen=True)
class ScanResult:
    frames: list
    returncode: int
    errors: str


def scan_video(path: str | Path, crop_limit: int = 24, timeout: float = 600.0) -> ScanResult:
    """Decode the whole file once with ffmpeg and return per-frame scene scores (`scdet`) and content boxes
    (`cropdetect`, reset every frame). Errors from the decoder are returned, not raised."""
    import subprocess

    path = str(path)
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-v", "error", "-i", path, "-map", "0:v:0", "-an",
           "-vf", f"scdet=threshold=100:sc_pass=0,cropdetect=limit={crop_limit}:round=2:reset=1:skip=0,"
                  "metadata=mode=print:file=-", "-f", "null", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise VideoReadError(f"{path}: ffmpeg scan timed out after {timeout:.0f} s") from exc
    frames, cur = [], None

    def flush():
        if cur is not None:
            frames.append(FrameScan(cur["n"], cur["t"], cur.get("lavfi.scd.score", 0.0),
                                    int(cur.get("lavfi.cropdetect.x1", 0)), int(cur.get("lavfi.cropdetect.x2", -1)),
                                    int(cur.get("lavfi.cropdetect.y1", 0)), int(cur.get("lavfi.cropdetect.y2", -1))))

    for line in proc.stdout.splitlines():
        if line.startswith("frame:"):
            flush()
            parts = dict(p.split(":", 1) for p in line.split() if ":" in p)
            try:
                t = float(parts.get("pts_time", "nan"))
            except ValueError:
                t = float("nan")
            cur = {"n": int(parts["frame"]), "t": t}
        elif "=" in line and cur is not None:
            k, v = line.split("=", 1)
            try:
                cur[k.strip()] = float(v)
            except ValueError:
                pass
    flush()
    return ScanResult(frames=frames, returncode=proc.returncode, errors=proc.stderr.strip()[-2000:])


def transcode_clip(src: str | Path, dst: str | Path, start_time: float, end_time: float, *,
                   crop: tuple[int, int, int, int] | None = None, fps: float | None = None,
                   max_long_side: int = 1080, crf: int = 18, preset: str = "veryfast",
                   timeout: float = 600.0) -> Path:
    """Cut [start_time, end_time) of `src`, crop (w, h, x, y), resample to constant `fps`, scale so the long side
    is at most `max_long_side` (even sizes), encode H.264 yuv420p without audio; temp name, then rename."""
    import subprocess

    dst = Path(dst)
    filters = []
    if crop is not None:
        w, h, x, y = crop
        filters.append(f"crop={w}:{h}:{x}:{y}")
    if fps:
        filters.append(f"fps={Fraction(fps).limit_denominator(1001)}")
    m = int(max_long_side) // 2 * 2
    filters.append(f"scale='if(gt(iw,ih),min({m},iw),-2)':'if(gt(iw,ih),-2,min({m},ih))'")
    filters.append("scale=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1")
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-v", "error", "-y",
           "-ss", f"{start_time:.6f}", "-i", str(src), "-t", f"{end_time - start_time:.6f}",
           "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", ",".join(filters),
           "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p", "-profile:v", "high",
           "-movflags", "+faststart", "-f", "mp4"]
    with atomic_path(dst, suffix=dst.suffix or ".mp4") as tmp:
        proc = subprocess.run(cmd + [tmp], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or os.path.getsize(tmp) == 0:
            raise VideoReadError(f"{src}: re-encoding [{start_time:.3f}, {end_time:.3f}) s failed "
                                 f"({proc.stderr.strip()[-500:]})")
    return dst
