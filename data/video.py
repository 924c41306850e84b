"""MP4 in and out with PyAV (FFmpeg's libraries): what the LeRobot converter and exporter use.

Frames are (T, H, W, 3) uint8 RGB. A video file may hold several episodes back to back; an
episode is addressed by its time span, as LeRobot v3 does (frame i of a file at i / fps).
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from robopolicy.errors import StoreError

# LeRobot's recorder defaults are AV1 (libsvtav1), yuv420p, a keyframe every 2 frames, crf 30.
# We write H.264 at crf 18: every FFmpeg build decodes it. 4:2:0 (the default) plays everywhere;
# 4:4:4 keeps full-resolution colour, which tiny frames with sharp colour need (a 24x32 camera:
# 33 dB in 4:2:0, 39 dB in 4:4:4), but browsers may not play it. Short GOPs keep random access
# cheap for loaders that seek per sample.
CODEC, PIX_FMT, CRF, GOP = "libx264", "yuv420p", 18, 2
PIX_FMTS = ("yuv420p", "yuv444p")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays, in dB (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


class VideoWriter:
    """Appends RGB frames to one MP4 at a constant frame rate (frame i at time i / fps)."""

    def __init__(self, path: Path, fps: float, height: int, width: int,
                 pix_fmt: str = PIX_FMT):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(CODEC, rate=rate)
        # 4:2:0 halves the chroma planes, so it needs even sides; odd-sized cameras get 4:4:4
        if width % 2 or height % 2:
            pix_fmt = "yuv444p"
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.stream.time_base = 1 / rate  # pts counts frames
        self.stream.options = {"crf": str(CRF), "g": str(GOP), "bf": "0"}
        self.n_frames = 0

    def write(self, frames: Iterable[np.ndarray]) -> None:
        import av

        for rgb in frames:  # rgb: (H, W, 3) uint8
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.n_frames
            self.container.mux(self.stream.encode(frame))
            self.n_frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
        self.container.close()


def codec_info(path: Path) -> dict:
    """Codec name and pixel format of the first video stream (LeRobot's info.json records them)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {"codec": stream.codec_context.codec.canonical_name,
                "pix_fmt": stream.codec_context.pix_fmt}


def read_span(path: Path, start_s: float, stop_s: float, fps: float) -> np.ndarray:
    """The frames whose timestamps lie in [start_s, stop_s) as (T, H, W, 3) uint8 RGB.

    Seeks to the keyframe before ``start_s`` and decodes forward; half a frame of tolerance
    absorbs timestamp rounding in the container.
    """
    import av

    tol = 0.5 / fps
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise StoreError(f"{path}: cannot open video ({exc})") from None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = []
        try:
            if start_s > tol:
                container.seek(int((start_s - tol) / stream.time_base), stream=stream,
                               backward=True)
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base)
                if t >= stop_s - tol:
                    break
                if t >= start_s - tol:
                    frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
        except av.error.FFmpegError as exc:
            raise StoreError(f"{path}: cannot decode video ({exc})") from None
    if not frames:
        return np.zeros((0, stream.height, stream.width, 3), np.uint8)
    return np.stack(frames)  # (T, H, W, 3)
