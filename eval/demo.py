"""``iwcodec demo``: the bundled demo clip (a person the model never saw in training) through the
whole codec, with a summary.

sample -> face crop -> ``.iwc`` stream (sender) -> decoded from that file with fresh state
(receiver) -> reconstruction video, a side-by-side video (face crop | reconstruction) and the
numbers: bitrate split into keyframe and keypoints (from the bytes written), PSNR / SSIM / LPIPS
of the reconstruction against exactly the crops that were encoded (eval.metrics, computed on
the decoded pixels, before the output video's own H.264 step).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from codec.model import ImplicitWarpingModel
from eval.metrics import compute_metrics
from iwcodec.errors import InputError
from iwcodec.outputs import same_file
from receiver.decoder import DecodedFrame, DecodeOptions, DecodeStats, decode_file
from receiver.writer import write_video
from sender.crop import crop_video
from sender.encoder import (
    EncodeOptions,
    EncodeStats,
    check_max_frames,
    encode_frames,
    write_atomically,
)

DEFAULT_OUT_DIR = Path("iwcodec-demo")


def demo_clip() -> Path:
    """The bundled demo clip: a validation clip, so its person is in no training clip and the
    numbers the demo prints are what a new user gets (iwcodec/samples/README.md gives its
    provenance)."""
    return Path(str(resources.files("iwcodec") / "samples" / "demo.mp4"))


@dataclass(frozen=True)
class DemoResult:
    input: Path
    stream: Path
    reconstruction: Path
    side_by_side: Path
    report: Path
    encode: EncodeStats
    decode: DecodeStats
    metrics: dict[str, Any]  # eval.metrics.compute_metrics clip values (no per-frame arrays)
    crop_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        e = self.encode
        return {
            "input": str(self.input),
            "outputs": {
                "stream": str(self.stream),
                "reconstruction": str(self.reconstruction),
                "side_by_side": str(self.side_by_side),
            },
            "frames": e.frames,
            "fps": [e.fps.numerator, e.fps.denominator],
            "resolution": [e.width, e.height],
            "bytes": {
                "total": e.bytes_total,
                "keyframes": e.bytes_keyframes,
                "keypoints": e.bytes_keypoints,
                "headers": e.bytes_params + e.bytes_end,
            },
            "kbps": {
                "total": e.kbps_total,
                "keyframes": e.kbps_keyframes,
                "keypoints": e.kbps_keypoints,
            },
            "keypoint_bytes_per_frame": e.bytes_keypoints / e.frames,
            "decoded_frames": self.decode.frames,
            "held_frames": self.decode.held,
            "crop_seconds": self.crop_seconds,
            "encode_seconds": e.seconds,
            "decode_seconds": self.decode.seconds,
            "metrics": self.metrics,
        }

    def summary(self) -> str:
        e, d, m = self.encode, self.decode, self.metrics
        return "\n".join(
            [
                f"iwcodec demo: {self.input.name}: {e.frames} frames, {float(e.fps):g} fps, "
                f"{e.duration:.2f} s, {e.width}x{e.height} face crop",
                f"  bitrate   {e.kbps_total:.2f} kbps = keyframe {e.kbps_keyframes:.2f} "
                f"({e.bytes_keyframes} B) + keypoints {e.kbps_keypoints:.2f} "
                f"({e.bytes_keypoints / e.frames:.2f} B/frame) + headers "
                f"{e.kbps(e.bytes_params + e.bytes_end):.2f}",
                f"  quality   PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
                f"LPIPS {m['lpips']:.4f} (reconstruction vs the encoded face crop)",
                f"  decoded   {d.summary()}",
                f"  time      face crop {self.crop_seconds:.1f} s, keypoints + coding "
                f"{e.seconds:.1f} s, decoding {d.seconds:.1f} s",
                f"  outputs   {self.stream}",
                f"            {self.reconstruction}",
                f"            {self.side_by_side}  (face crop | reconstruction)",
                f"            {self.report}",
            ]
        )


def run_demo(
    model: ImplicitWarpingModel,
    out_dir: str | Path = DEFAULT_OUT_DIR,
    input_path: str | Path | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> DemoResult:
    """Encode, decode and score ``input_path`` (default: the bundled demo clip) into ``out_dir``.

    Writes ``<name>.iwc``, ``reconstruction.mp4``, ``side_by_side.mp4`` and ``demo.json``.
    ``max_frames``: only the first N frames are decoded, tracked and cropped (as if the clip
    ended there), so a short demo does not pay for tracking the face through the whole clip.
    """
    check_max_frames(max_frames)
    src = Path(input_path) if input_path is not None else demo_clip()
    out = Path(out_dir)
    prepare_out_dir(out, src)
    start = time.perf_counter()
    clip = crop_video(src, model.cfg.image_size, max_frames=max_frames)
    crop_seconds = time.perf_counter() - start
    stream = out / f"{src.stem}.iwc"
    enc = write_atomically(
        stream,
        lambda f: encode_frames(clip.frames, clip.fps, model, f, EncodeOptions(progress=progress)),
    )
    decoded: list[DecodedFrame] = []
    reconstruction = out / "reconstruction.mp4"
    dec = decode_file(
        stream, reconstruction, model, DecodeOptions(progress=progress), on_frame=decoded.append
    )
    frames = np.stack([f.rgb for f in decoded])  # (T, H, W, 3) uint8
    side_by_side = write_video(
        out / "side_by_side.mp4", np.concatenate([clip.frames, frames], axis=2), clip.fps
    )
    metrics = compute_metrics(clip.frames, frames, model_device(model), with_akd=False)
    metrics.pop("per_frame")
    report = out / "demo.json"
    result = DemoResult(
        src, stream, reconstruction, side_by_side, report, enc, dec, metrics, crop_seconds
    )
    report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


OUTPUT_NAMES = ("reconstruction.mp4", "side_by_side.mp4", "demo.json")


def prepare_out_dir(out: Path, src: Path) -> None:
    """Create ``out``; refuse a path that is a file, and an input that an output would replace."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir {out}: is a file, not a folder: name a folder for the outputs")
    for name in (f"{src.stem}.iwc", *OUTPUT_NAMES):
        if same_file(out / name, src):
            raise InputError(
                f"{src}: the demo would write {out / name} over its own input: pick another "
                "--out-dir"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"--out-dir {out}: cannot create the folder ({exc.strerror or exc})"
        ) from None


def model_device(model: ImplicitWarpingModel):
    return next(model.parameters()).device
