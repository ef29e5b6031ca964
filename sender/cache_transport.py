"""Shrink a crop cache for upload, and rebuild it on the training machine (``iwcodec cache``).

The crop cache (``python -m sender.cache``) is ~200 KB per frame of raw uint8; the training
machine takes uploads of at most 64 MiB and has no PyAV. So:

:func:`pack` (``iwcodec cache pack CACHE_DIR OUT_DIR [--crf 16] [--part i/n]``)
    per clip: ``<name>.mp4`` (H.264 High 4:4:4, yuv444p, constant quality ``crf``; 4:4:4
    because chroma subsampling blurs lips and eyes at 256 px for little saving),
    ``<name>.lmk.xz`` (landmarks quantized to 1/1024 of the [-1, 1] range, i.e. 1/8 px at 256,
    delta-coded over time, int16, LZMA), and ``<name>.track.npz`` copied. ``pack.json`` lists
    the clips of this part with shapes and the measured round-trip PSNR; ``index.json`` is
    copied. Part ``i/n`` (1-based) packs a balanced share of the clips so the set can travel
    in n uploads.

:func:`unpack` (``iwcodec cache unpack PACKED_DIR... CACHE_DIR``)
    rebuilds ``<name>.npy`` / ``<name>.landmarks.npy`` / ``<name>.track.npz`` and merges
    ``index.json``; decodes with PyAV when importable, else with OpenCV (cv2).

Light on purpose (numpy and lzma at import; av or cv2 only when a video is coded): it runs
where the project's sender dependencies (PyAV, MediaPipe) are not installed, as
``python3 -m iwcodec cache unpack ...`` from a checkout.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from iwcodec.errors import InputError

PACK_VERSION = 1
LMK_SCALE = 1024  # quantization steps per unit of the [-1, 1] landmark coordinates
N_LANDMARKS = 478


class TransportError(InputError):
    """A crop cache or packed folder that cannot be used (damaged, of another version)."""


# ---------------------------------------------------------------- landmarks


def encode_landmarks(marks: np.ndarray) -> bytes:
    """(T, P, 2) float (NaN rows = no face) -> bytes: T validity bytes, then LZMA'd int16
    frame-to-frame deltas of round(x * LMK_SCALE); rows without a face repeat the last row."""
    marks = np.asarray(marks, np.float32)
    t = marks.shape[0]
    valid = np.isfinite(marks).all(axis=(1, 2))
    q = np.zeros(marks.shape, np.int32)
    q[valid] = np.clip(np.round(marks[valid] * LMK_SCALE), -16000, 16000)
    last = np.zeros(marks.shape[1:], np.int32)
    for i in range(t):
        if valid[i]:
            last = q[i]
        else:
            q[i] = last
    delta = np.diff(q, axis=0, prepend=np.zeros((1, *marks.shape[1:]), np.int32))
    if t and np.abs(delta).max() > 32767:
        raise TransportError("landmark step too large to delta-code")
    payload = valid.astype(np.uint8).tobytes() + delta.astype("<i2").tobytes()
    return lzma.compress(payload, preset=9)


def decode_landmarks(data: bytes, frames: int, points: int = N_LANDMARKS) -> np.ndarray:
    """Inverse of :func:`encode_landmarks` -> (T, P, 2) float16 with NaN rows restored."""
    try:
        raw = lzma.decompress(data)
    except lzma.LZMAError as exc:
        raise TransportError(f"damaged landmark file ({exc})") from None
    if len(raw) != frames + frames * points * 2 * 2:
        raise TransportError(f"landmark file holds {len(raw)} bytes, expected {frames} frames")
    valid = np.frombuffer(raw[:frames], np.uint8).astype(bool)
    delta = np.frombuffer(raw[frames:], "<i2").reshape(frames, points, 2).astype(np.int32)
    q = np.cumsum(delta, axis=0)
    out = (q / LMK_SCALE).astype(np.float16)
    out[~valid] = np.nan
    return out


# ---------------------------------------------------------------- video


def encode_clip(frames: np.ndarray, path: Path, crf: int, fps: int = 25) -> None:
    """(T, S, S, 3) uint8 RGB -> H.264 yuv444p mp4 at ``path`` (PyAV, libx264)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        # slow preset: smaller files at the same crf; encode time is minor at 256 px
        stream.options = {"crf": str(crf), "preset": "slow", "tune": "film"}
        for rgb in frames:
            for pkt in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            ):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)


def _decode_av(path: Path):
    import av

    try:
        with av.open(str(path)) as c:
            for f in c.decode(c.streams.video[0]):
                yield f.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise TransportError(f"{path}: cannot decode ({exc})") from None


def _decode_cv2(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise TransportError(f"{path}: OpenCV cannot open it")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield np.ascontiguousarray(bgr[:, :, ::-1])
    finally:
        cap.release()


def decoder(prefer_av: bool = True):
    """The frame decoder available here: PyAV if importable (and preferred), else cv2."""
    if prefer_av:
        try:
            import av  # noqa: F401

            return _decode_av
        except ImportError:
            pass
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise TransportError(
            "unpacking needs PyAV (av) or OpenCV (cv2); neither is installed"
        ) from None
    return _decode_cv2


def decode_into(path: Path, out: np.ndarray, decode) -> int:
    """Decode ``path`` into out (T, S, S, 3) uint8; return the number of frames decoded."""
    n = 0
    for rgb in decode(path):
        if n >= len(out):
            raise TransportError(f"{path}: more frames than the {len(out)} expected")
        if rgb.shape != out.shape[1:]:
            raise TransportError(f"{path}: frame of shape {rgb.shape}, expected {out.shape[1:]}")
        out[n] = rgb
        n += 1
    return n


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ---------------------------------------------------------------- pack / unpack


def parse_part(text: str) -> tuple[int, int]:
    """ "i/n" (1-based share i of n) -> (i, n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise TransportError(f"a part is i/n such as 1/2, got {text!r}") from None
    if not 1 <= i <= n:
        raise TransportError(f"part {text}: need 1 <= i <= n")
    return i, n


def split_parts(clips: dict, n: int) -> list[list[str]]:
    """Balance clips over n parts by frame count (largest first, into the lightest part);
    deterministic, so packing part 1/2 and part 2/2 separately covers every clip once."""
    parts: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for name in sorted(clips, key=lambda k: (-clips[k]["frames"], k)):
        j = load.index(min(load))
        parts[j].append(name)
        load[j] += clips[name]["frames"]
    return [sorted(p) for p in parts]


def _load_index(cache: Path) -> dict:
    try:
        return json.loads((cache / "index.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransportError(f"{cache}: no readable index.json ({exc})") from None


def _pack_clip(cache: Path, out: Path, name: str, crf: int, fps: int, check) -> dict:
    """One clip into ``out`` (video, landmarks, track), decoded back to measure the loss."""
    frames = np.load(cache / f"{name}.npy", mmap_mode="r")  # (T, S, S, 3) uint8
    marks = np.load(cache / f"{name}.landmarks.npy")  # (T, 478, 2) float16
    encode_clip(frames, out / f"{name}.mp4", crf, fps)
    (out / f"{name}.lmk.xz").write_bytes(encode_landmarks(marks))
    shutil.copyfile(cache / f"{name}.track.npz", out / f"{name}.track.npz")
    back = np.empty(frames.shape, np.uint8)
    n = decode_into(out / f"{name}.mp4", back, check)
    if n != len(frames):
        raise TransportError(f"{name}: round trip gave {n} frames of {len(frames)}")
    return {
        "frames": int(frames.shape[0]),
        "size": int(frames.shape[1]),
        "psnr": round(psnr(frames, back), 3),
        "mp4_bytes": (out / f"{name}.mp4").stat().st_size,
        "lmk_bytes": (out / f"{name}.lmk.xz").stat().st_size,
    }


def pack(
    cache: Path,
    out: Path,
    crf: int = 16,
    part: tuple[int, int] = (1, 1),
    report: Callable[[str], None] = lambda line: None,
) -> dict:
    """Pack one part of a crop cache into ``out``; return the part's manifest."""
    if not 0 <= crf <= 51:
        raise TransportError(f"crf must be within 0..51 (x264's scale), got {crf}")
    index = _load_index(cache)
    names = split_parts(index["clips"], part[1])[part[0] - 1]
    out.mkdir(parents=True, exist_ok=True)
    check = decoder(prefer_av=True)
    manifest = {
        "version": PACK_VERSION,
        "crf": crf,
        "pix_fmt": "yuv444p",
        "lmk_scale": LMK_SCALE,
        "part": f"{part[0]}/{part[1]}",
        "clips": {},
    }
    for k, name in enumerate(names):
        fps = max(1, round(index["clips"][name].get("fps_float", 25)))
        e = manifest["clips"][name] = _pack_clip(cache, out, name, crf, fps, check)
        report(
            f"[{k + 1}/{len(names)}] {name}: {e['frames']} frames, {e['mp4_bytes'] / 1024:.0f} "
            f"KiB video, {e['lmk_bytes'] / 1024:.0f} KiB landmarks, PSNR {e['psnr']:.2f} dB"
        )
    sub = dict(index, clips={k: index["clips"][k] for k in names})
    (out / "index.json").write_text(json.dumps(sub, indent=1, sort_keys=True))
    (out / "pack.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def pack_summary(manifest: dict) -> str:
    """One line: clips, frames, MiB and mean round-trip PSNR of a part."""
    clips = manifest["clips"].values()
    total = sum(e["mp4_bytes"] + e["lmk_bytes"] for e in clips)
    mean_psnr = np.mean([e["psnr"] for e in clips]) if clips else float("nan")
    return (
        f"packed {len(clips)} clips, {sum(e['frames'] for e in clips)} frames: "
        f"{total / 2**20:.2f} MiB, mean round-trip PSNR {mean_psnr:.2f} dB"
    )


def _read_manifest(packed: Path) -> tuple[dict, dict]:
    """(pack.json, index.json) of a packed folder."""
    try:
        manifest = json.loads((packed / "pack.json").read_text())
        sub = json.loads((packed / "index.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransportError(f"{packed}: not a packed crop cache ({exc})") from None
    if manifest.get("version") != PACK_VERSION:
        raise TransportError(
            f"{packed}: pack version {manifest.get('version')}, this build reads {PACK_VERSION}"
        )
    return manifest, sub


def _unpack_clip(packed: Path, cache: Path, name: str, entry: dict, decode) -> None:
    """One clip into ``cache``; its ``.npy`` appears only when complete."""
    t, s = entry["frames"], entry["size"]
    tmp = cache / f"{name}.npy.tmp"
    frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(t, s, s, 3))
    try:
        n = decode_into(packed / f"{name}.mp4", frames, decode)
        if n != t:
            raise TransportError(f"{packed / name}.mp4: decoded {n} frames, expected {t}")
    except TransportError:
        del frames
        tmp.unlink(missing_ok=True)
        raise
    frames.flush()
    del frames
    marks = decode_landmarks((packed / f"{name}.lmk.xz").read_bytes(), t)
    np.save(cache / f"{name}.landmarks.npy", marks)
    shutil.copyfile(packed / f"{name}.track.npz", cache / f"{name}.track.npz")
    os.replace(tmp, cache / f"{name}.npy")


def _merge_index(cache: Path, manifest: dict, sub: dict) -> None:
    """Add the unpacked clips (with how they travelled) to ``cache/index.json``, atomically."""
    index_path = cache / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else dict(sub, clips={})
    for name in manifest["clips"]:
        index["clips"][name] = dict(
            sub["clips"][name],
            transport={
                "crf": manifest["crf"],
                "pix_fmt": manifest["pix_fmt"],
                "psnr": manifest["clips"][name]["psnr"],
            },
        )
    with tempfile.NamedTemporaryFile("w", dir=cache, delete=False, suffix=".tmp") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    os.replace(f.name, index_path)


def unpack(
    packed: Path,
    cache: Path,
    prefer_av: bool = True,
    report: Callable[[str], None] = lambda line: None,
) -> list[str]:
    """Rebuild the clips of one packed folder into ``cache`` (merging index.json)."""
    manifest, sub = _read_manifest(packed)
    decode = decoder(prefer_av)
    cache.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["clips"].items():
        _unpack_clip(packed, cache, name, entry, decode)
        report(f"{name}: {entry['frames']} frames")
    _merge_index(cache, manifest, sub)
    return list(manifest["clips"])
