"""The results schema shared by every codec, and the resumable store that writes it.

``results.json`` is a JSON list of records, one per (operating point, clip), the same fields
for our codec, the classic codecs and the keyframe-only baseline (the CompressAI habit: one
schema, plots read only the JSON):

=================== ======================================================================
field               meaning
=================== ======================================================================
codec               ``iwcodec``, ``x264``, ``x265``, ``vp8``, ``vp9``, ``svtav1`` or
                    ``keyframe-only``
params              the settings (dict; per codec, see eval/operating_points.py)
clip                clip name (the video file's stem)
frames, fps         frames scored and their rate (float)
bytes               bytes really written: our ``.iwc`` file; the classic codec's packets
                    (+ extradata); the keyframe images for the baseline
kbps                ``bytes * 8 / (frames / fps) / 1000``
psnr, ssim,         clip means over frames (eval/metrics.py); ``null`` where a value is not a
ms_ssim, lpips, akd finite number (PSNR of a clip identical to its original, AKD with no face)
lpips_vgg, dists    the same, optional (absent from records made before they were added)
=================== ======================================================================

Extra fields: ``key`` (the operating point, eval/operating_points.py), ``family`` (the plot
curve), ``label``, ``duration_s``, ``psnr_inf_frames``, ``ms_ssim_win``, ``akd_frames``,
``akd_no_face_ref``, ``akd_no_face_test``, ``encode_s``, ``decode_s``, ``decode_fps``,
``device``, ``self_psnr``, ``self_lpips``, ``keyframe_psnr``, ``keyframe_lpips`` (ours:
eval/run.py ``keyframe_fidelity``), ``per_frame`` (path, relative to the results folder, of an ``.npz`` with the
per-frame arrays), and codec-specific ones (``bytes_split`` for ours, ``keyframes``).

The store rewrites ``results.json`` atomically after every record, so an interrupted run
loses at most the record in progress, and a rerun skips the (key, clip) pairs already there.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from iwcodec.errors import InputError

RESULTS_FILE = "results.json"
PER_FRAME_DIR = "per_frame"
METRICS: tuple[str, ...] = ("psnr", "ssim", "ms_ssim", "lpips", "akd")
#: Metrics added later (records written before them lack them): LPIPS(vgg) and DISTS.
OPTIONAL_METRICS: tuple[str, ...] = ("lpips_vgg", "dists")
#: Every record has these fields, with these JSON types (``None`` allowed for metrics).
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "codec": (str,),
    "params": (dict,),
    "clip": (str,),
    "frames": (int,),
    "fps": (float, int),
    "bytes": (int,),
    "kbps": (float, int),
    **{m: (float, int, type(None)) for m in METRICS},
}


def kbps(nbytes: int, frames: int, fps: float) -> float:
    """``nbytes`` spread over ``frames`` at ``fps``, in kbit/s (1 kbit = 1000 bits)."""
    if frames <= 0 or not fps > 0:
        raise InputError(f"a rate needs frames > 0 and fps > 0, got {frames} frames at {fps}")
    return nbytes * 8 / (frames / fps) / 1000


def json_number(x: Any) -> float | int | None:
    """A number as JSON can hold it: non-finite floats become ``None``."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        raise TypeError("not a number")
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise InputError unless ``record`` follows the schema."""
    for name, types in REQUIRED_FIELDS.items():
        if name not in record:
            raise InputError(f"result record lacks {name!r}: {dict(record)}")
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise InputError(f"result record field {name!r} has type {type(value).__name__}")
    if record["frames"] <= 0 or record["bytes"] < 0 or not record["fps"] > 0:
        raise InputError(f"result record with impossible counts: {dict(record)}")
    expected = kbps(record["bytes"], record["frames"], record["fps"])
    if not math.isclose(record["kbps"], expected, rel_tol=1e-9):
        raise InputError(
            f"record kbps {record['kbps']} does not follow from its bytes ({expected})"
        )


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``results.json`` (or of the folder holding one), validated."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no results file (run `iwcodec eval` first)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(records, list):
        raise InputError(f"{path}: a results file holds a JSON list of records")
    for r in records:
        if not isinstance(r, dict):
            raise InputError(f"{path}: a results file holds a JSON list of records")
        validate_record(r)
    return records


def write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def record_id(key: str, clip: str) -> str:
    return f"{key}@{clip}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class ResultStore:
    """``results.json`` of an output folder: the records done so far, appended one by one."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / RESULTS_FILE
        self.records: list[dict[str, Any]] = load_results(self.path) if self.path.exists() else []
        self._done = {record_id(r.get("key", ""), r["clip"]) for r in self.records}

    def done(self, key: str, clip: str) -> bool:
        return record_id(key, clip) in self._done

    def add(
        self, record: dict[str, Any], per_frame: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Validate, store the per-frame arrays beside it, and rewrite ``results.json``."""
        validate_record(record)
        rid = record_id(record.get("key", ""), record["clip"])
        if rid in self._done:
            raise InputError(f"{rid} is already in {self.path}")
        if per_frame:
            folder = self.out_dir / PER_FRAME_DIR
            folder.mkdir(exist_ok=True)
            name = f"{_slug(rid)}.npz"
            tmp = folder / f".{name}.part.npz"
            np.savez_compressed(tmp, **{k: np.asarray(v, np.float32) for k, v in per_frame.items()})
            os.replace(tmp, folder / name)
            record = {**record, "per_frame": f"{PER_FRAME_DIR}/{name}"}
        self.records.append(record)
        self._done.add(rid)
        write_json_atomically(self.path, self.records)

    def drop(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Remove the records ``predicate`` selects (and their per-frame files); returns how
        many were removed."""
        gone = [r for r in self.records if predicate(r)]
        if not gone:
            return 0
        self.records = [r for r in self.records if not predicate(r)]
        for r in gone:
            self._done.discard(record_id(r.get("key", ""), r["clip"]))
            if "per_frame" in r:
                (self.out_dir / r["per_frame"]).unlink(missing_ok=True)
        write_json_atomically(self.path, self.records)
        return len(gone)


def clips_of(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({r["clip"] for r in records})
