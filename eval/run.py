"""``iwcodec eval CLIP... --out DIR``: rate-quality evaluation of our codec, the classic codecs
and the keyframe-only baseline on the same face crops.

Pipeline (each stage a function; :func:`run_eval` chains them):

1. :func:`prepare_clip`: the sender's face crop of each clip (``sender.encoder.crop_input``, at
   the model's resolution) and the crops' face-mesh landmarks (for AKD), computed once and
   cached under ``DIR/work/clips/`` so that every codec sees identical frames and a rerun
   does not crop again;
2. one job per (operating point, clip), eval/operating_points.py:

   - :func:`run_ours`: encode to a ``.iwc`` file (kept under ``DIR/streams/``), then decode
     that file with a fresh decoder; bytes = the file's size;
   - :func:`run_classic`: eval/classic.py (bytes = the packets, decoded by a fresh decoder);
   - :func:`run_keyframe_only`: the keyframe image(s) alone, decoded and shown for every frame;

3. :func:`score`: eval/metrics.py against the crops (PSNR, SSIM, MS-SSIM, LPIPS(alex), AKD
   with the cached landmarks), one record per job into ``results.json`` (eval/results.py),
   per-frame arrays into ``per_frame/``;
4. ``summary.md``, ``HEADLINE.md`` (eval/summary.py) and RD plots (eval/plots.py), made from
   ``results.json`` alone.

Resumable: records are written as they finish and a rerun skips the (point, clip) pairs
already in ``results.json``; a folder of results made with other weights is refused.
``run.json`` records the weights, the clips and the machine(s) the run used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bitstream import KeyframeUnit, read_units
from codec.model import ImplicitWarpingModel
from eval.akd import akd_from_landmarks, face_landmarks
from eval.classic import encode_decode
from eval.metrics import Scorers, compute_metrics, psnr_per_frame
from eval.operating_points import (
    IWCODEC,
    KEYFRAME_ONLY,
    ClassicPoint,
    KeyframeOnlyPoint,
    OurPoint,
    Point,
    default_plan,
    keyframe_indices,
)
from eval.results import (
    METRICS,
    OPTIONAL_METRICS,
    ResultStore,
    json_number,
    kbps,
    write_json_atomically,
)
from iwcodec.errors import InputError, IWCodecError
from iwcodec.keyframe import decode_keyframe, encode_keyframe, parse_codec
from iwcodec.provenance import git_commit, git_dirty
from receiver.decoder import DecodeOptions, decode_frames
from sender.cache import clip_names, sha256_of
from sender.crop import iter_crops
from sender.encoder import crop_input, encode_frames, write_atomically

RUN_FILE = "run.json"
CLIP_CACHE_VERSION = 2  # 2: boxes.npy and the crops' digest


@dataclass(frozen=True)
class PreparedClip:
    """One clip as every codec sees it.

    frames: (T, S, S, 3) uint8 face crops; landmarks: (T, 478, 2) face-mesh points of the
    crops (NaN rows: no face), or None when AKD is off.
    """

    name: str
    path: str
    sha256: str
    frames: np.ndarray = field(repr=False)
    fps: Fraction
    landmarks: np.ndarray | None = field(repr=False)

    @property
    def duration(self) -> float:
        return len(self.frames) / float(self.fps)


@dataclass(frozen=True)
class JobOutput:
    """What a codec produced for one clip: the decoded frames and the record's codec-specific
    fields (``bytes`` among them)."""

    decoded: np.ndarray  # (T, S, S, 3) uint8
    fields: dict[str, Any]


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run.

    Attributes:
        clips: video files (each gets the sender's face crop).
        out_dir: results folder (results.json, plots, summary, streams, per_frame).
        plan: the operating points (eval/operating_points.py).
        work_dir: cached crops and landmarks (default ``out_dir / "work"``; not results).
        max_frames: use only the first N frames of each clip.
        with_akd: compute AKD (face mesh on every decoded frame).
        metrics_batch: frames per metrics batch.
        progress: progress bar and one line per finished record.
        report: write summary and plots at the end.
        replace_ours: when the folder's results were made with other weights, drop our
            codec's records and run them again (the classic and baseline records do not
            depend on the weights and are kept); otherwise such a folder is refused.
        subsets: named groups of clip names (file stems) that the summary also averages
            over on their own (e.g. "val-4": the clips older results used).
    """

    clips: tuple[Path, ...]
    out_dir: Path
    plan: tuple[Point, ...] = field(default_factory=default_plan)
    work_dir: Path | None = None
    max_frames: int | None = None
    with_akd: bool = True
    metrics_batch: int = 16
    progress: bool = True
    report: bool = True
    replace_ours: bool = False
    subsets: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class EvalRun:
    """The outcome: every record of the folder, and the jobs that failed this time."""

    records: list[dict[str, Any]]
    done_now: int
    skipped: int
    failures: list[dict[str, str]]


# -- clips --------------------------------------------------------------------------------------
def prepare_clip(
    path: str | Path,
    name: str,
    size: int,
    cache_dir: Path,
    max_frames: int | None = None,
    with_akd: bool = True,
) -> PreparedClip:
    """Face crops (and their landmarks) of one clip, from the cache when it matches the file's
    hash and the settings, else computed and cached.

    The cache folder ``cache_dir/name`` holds ``crops.npy`` (T, S, S, 3) uint8,
    ``boxes.npy`` (T, 3) float32 (the squares cut from the source, ``sender.crop``),
    ``landmarks.npy`` and ``meta.json`` (settings, the crops' SHA-256). Without
    ``crops.npy`` the crops are cut again from the source at the stored boxes and must match
    the digest: so a cache can travel without its crops (a few KB per clip instead of 200 KB
    per frame) to a machine that has no face detector, and score exactly the same pixels."""
    path = Path(path)
    sha = sha256_of(path)
    folder = cache_dir / name
    meta_path = folder / "meta.json"
    settings = {
        "version": CLIP_CACHE_VERSION,
        "sha256": sha,
        "size": size,
        "max_frames": max_frames,
    }
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    crops_path, boxes_path = folder / "crops.npy", folder / "boxes.npy"
    if {k: meta.get(k) for k in settings} != settings or not (
        crops_path.is_file() or boxes_path.is_file()
    ):
        clip = crop_input(path, size, max_frames)
        folder.mkdir(parents=True, exist_ok=True)
        _save_npy(crops_path, clip.frames)
        _save_npy(boxes_path, clip.boxes)
        (folder / "landmarks.npy").unlink(missing_ok=True)
        meta = {**settings, "fps": [clip.fps.numerator, clip.fps.denominator]}
        meta.update(frames=len(clip.frames), source=str(path), crops_sha256=_digest(clip.frames))
        write_json_atomically(meta_path, meta)
    elif not crops_path.is_file():
        _save_npy(crops_path, recut_crops(path, np.load(boxes_path), size, meta["crops_sha256"]))
    frames = np.load(crops_path)
    landmarks = None
    if with_akd:
        lm_path = folder / "landmarks.npy"
        if lm_path.is_file():
            landmarks = np.load(lm_path)
        else:
            landmarks = face_landmarks(frames)  # (T, 478, 2)
            _save_npy(lm_path, landmarks)
    return PreparedClip(name, str(path), sha, frames, Fraction(*meta["fps"]), landmarks)


def _digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).data).hexdigest()


def recut_crops(path: Path, boxes: np.ndarray, size: int, digest: str) -> np.ndarray:
    """The crops of ``path`` cut again at ``boxes`` (T, 3); IWCodecError unless they are the
    very pixels whose SHA-256 is ``digest`` (another FFmpeg build can decode differently)."""
    frames = np.empty((len(boxes), size, size, 3), np.uint8)
    n = 0
    for n, (_, crop) in enumerate(iter_crops(path, boxes, size), start=1):
        frames[n - 1] = crop
    if n != len(boxes) or _digest(frames) != digest:
        raise IWCodecError(
            f"{path}: the crops cut again from the stored boxes differ from the cached ones "
            f"({n} of {len(boxes)} frames); delete the clip's cache folder to start afresh"
        )
    return frames


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.part.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


# -- codecs -------------------------------------------------------------------------------------
def run_ours(
    point: OurPoint, clip: PreparedClip, model: ImplicitWarpingModel, streams_dir: Path
) -> JobOutput:
    """Encode the crops to ``streams_dir/<clip>__<point>.iwc``, decode that file afresh."""
    streams_dir.mkdir(parents=True, exist_ok=True)
    path = streams_dir / f"{clip.name}__{point.name}.iwc"
    options = point.encode_options(len(clip.frames))
    enc = write_atomically(path, lambda f: encode_frames(clip.frames, clip.fps, model, f, options))
    nbytes = path.stat().st_size
    if nbytes != enc.bytes_total:
        raise IWCodecError(f"{path}: {nbytes} bytes on disk, the encoder counted {enc.bytes_total}")
    decoded, dec = decode_frames(path, model, DecodeOptions(progress=False))
    if len(decoded) != len(clip.frames) or dec.held:
        raise IWCodecError(
            f"{path}: decoded {len(decoded)} frames ({dec.held} held) of {len(clip.frames)}"
        )
    return JobOutput(
        decoded,
        {
            "bytes": nbytes,
            "bytes_split": {
                "keyframes": enc.bytes_keyframes,
                "keypoints": enc.bytes_keypoints,
                "headers": enc.bytes_params + enc.bytes_end,
            },
            "keyframes": enc.keyframes,
            "frames_as_keyframe": enc.frames_as_keyframe,
            "weights_id": model.weights_id.hex() if model.weights_id is not None else None,
            "stream": f"streams/{path.name}",
            "encode_s": enc.seconds,
            "decode_s": dec.seconds,
            "decode_fps": dec.rendered / dec.seconds if dec.seconds else None,
        },
    )


def keyframe_fidelity(
    stream: Path, decoded: np.ndarray, clip: PreparedClip, scorers: Scorers
) -> dict[str, Any]:
    """The ceiling and the floor of a stream, from its keyframes as the receiver decodes them.

    Per keyframe unit of ``stream`` at frame i: *self-reconstruction* scores the decoded frame
    i (the keyframe rendered from its own, quantized keypoints: the easiest frame there is)
    against the decoded keyframe picture the receiver rendered it from; *keyframe* scores that
    picture against the original crop (what the image codec loses). Means over keyframes:
    ``self_psnr``, ``self_lpips``, ``keyframe_psnr``, ``keyframe_lpips``.
    decoded: (T, S, S, 3) uint8, the frames decoded from ``stream``."""
    pictures, frames = [], []
    for unit in read_units(stream):
        if isinstance(unit, KeyframeUnit) and unit.frame_index < len(decoded):
            pictures.append(decode_keyframe(unit.data, unit.codec))
            frames.append(unit.frame_index)
    if not pictures:
        raise IWCodecError(f"{stream}: no keyframe to score")
    device = scorers.device
    pics = np.stack(pictures)  # (N, S, S, 3)

    def pair(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        ta, tb = (torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255 for x in (a, b))
        with torch.inference_mode():
            lp = float(scorers.nets["lpips"](ta, tb).mean())
        psnr = psnr_per_frame(a, b)
        return float(np.mean(np.minimum(psnr, 100.0))), lp  # identical pictures count as 100 dB

    self_psnr, self_lpips = pair(pics, decoded[frames])
    key_psnr, key_lpips = pair(clip.frames[frames], pics)
    return {
        "self_psnr": self_psnr,
        "self_lpips": self_lpips,
        "keyframe_psnr": key_psnr,
        "keyframe_lpips": key_lpips,
    }


def run_classic(point: ClassicPoint, clip: PreparedClip, work_dir: Path) -> JobOutput:
    """One classic encode of the crops at the point's target, decoded from its packets."""
    work_dir.mkdir(parents=True, exist_ok=True)
    r = encode_decode(
        clip.frames, float(clip.fps), point.codec, point.mode, point.target_kbps, work_dir
    )
    return JobOutput(
        r.decoded,
        {
            "bytes": r.bytes,
            "params": {**r.params, "target_kbps": point.target_kbps},
            "keyframes": r.keyframes,
            "encode_s": r.encode_s,
            "decode_s": r.decode_s,
            "decode_fps": r.frames / r.decode_s if r.decode_s else None,
        },
    )


def run_keyframe_only(point: KeyframeOnlyPoint, clip: PreparedClip) -> JobOutput:
    """The keyframe(s) coded alone; each decoded picture is shown until the next keyframe."""
    n = len(clip.frames)
    indices = keyframe_indices(n, point.keyframes)
    start = time.perf_counter()
    images = [
        encode_keyframe(clip.frames[i], point.keyframe_codec, point.keyframe_quality)
        for i in indices
    ]
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    pictures = np.stack([decode_keyframe(data, point.keyframe_codec) for data in images])
    decode_s = time.perf_counter() - start
    shown = np.searchsorted(np.asarray(indices), np.arange(n), side="right") - 1  # (T,)
    return JobOutput(
        pictures[shown],
        {
            "bytes": sum(len(d) for d in images),
            "keyframes": len(indices),
            "keyframe_bytes": [len(d) for d in images],
            "encode_s": encode_s,
            "decode_s": decode_s,
        },
    )


# -- scoring ------------------------------------------------------------------------------------
def score(
    clip: PreparedClip,
    decoded: np.ndarray,
    scorers: Scorers,
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, Any]:
    """eval.metrics against the clip's crops, reusing its landmarks."""
    return compute_metrics(
        clip.frames,
        decoded,
        device,
        batch_size=batch_size,
        with_akd=clip.landmarks is not None,
        ref_landmarks=clip.landmarks,
        scorers=scorers,
    )


def make_record(
    point: Point, clip: PreparedClip, out: JobOutput, metrics: dict[str, Any], device: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The results.json record of one job (eval/results.py) and its per-frame arrays."""
    metrics = dict(metrics)
    per_frame = metrics.pop("per_frame")
    fields = dict(out.fields)
    nbytes = int(fields.pop("bytes"))
    params = fields.pop("params", point.params)
    fps = float(clip.fps)
    record: dict[str, Any] = {
        "codec": point.codec,
        "params": params,
        "clip": clip.name,
        "frames": len(clip.frames),
        "fps": fps,
        "bytes": nbytes,
        "kbps": kbps(nbytes, len(clip.frames), fps),
        **{m: json_number(metrics.get(m)) for m in (*METRICS, *OPTIONAL_METRICS)},
        "key": point.key,
        "family": point.family,
        "label": point.label,
        "fps_fraction": f"{clip.fps.numerator}/{clip.fps.denominator}",
        "duration_s": clip.duration,
    }
    for name in (
        "psnr_inf_frames",
        "ms_ssim_win",
        "akd_frames",
        "akd_no_face_ref",
        "akd_no_face_test",
    ):
        if name in metrics:
            record[name] = json_number(metrics[name])
    for name, value in fields.items():
        record[name] = json_number(value) if isinstance(value, float) else value
    record["device"] = device
    return record, per_frame


# -- the run ------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine a run used: CPU model and cores, GPU, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for package in ("av", "mediapipe", "numpy", "pytorch-msssim"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def check_weights(
    out_dir: Path,
    model: ImplicitWarpingModel,
    store: ResultStore,
    replace_ours: bool,
    say: Callable[[str], None],
) -> None:
    """Refuse (or, with ``replace_ours``, clear our codec's records from) a folder whose
    results came from other weights; refuse one made at another model resolution."""
    path = out_dir / RUN_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    size = old.get("model", {}).get("image_size")
    if size not in (None, model.cfg.image_size):
        raise InputError(
            f"{out_dir} holds results on {size} px crops, the model works at "
            f"{model.cfg.image_size} px: use another --out folder"
        )
    wid = model.weights_id.hex() if model.weights_id is not None else None
    if old.get("weights_id") in (None, wid):
        return
    if not replace_ours:
        raise InputError(
            f"{out_dir} holds results made with weights {old['weights_id']}, these are {wid}: "
            "use another --out folder, or --replace-ours to run our codec again there (the "
            "classic and keyframe-only records are kept)"
        )
    dropped = store.drop(lambda r: r["codec"] == IWCODEC)
    say(f"weights changed ({old['weights_id']} -> {wid}): {dropped} iwcodec records dropped")


def record_run(
    out_dir: Path,
    model: ImplicitWarpingModel,
    weights: str | Path | None,
    clips: Sequence[PreparedClip],
    device: torch.device,
    subsets: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Write ``run.json`` (weights, clips, machines, code version); refuse a folder whose
    results came from other versions of the same clips (another file, length or size)."""
    path = out_dir / RUN_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    wid = model.weights_id.hex() if model.weights_id is not None else None
    clips_info = dict(old.get("clips", {}))
    for c in clips:
        known = clips_info.get(c.name)
        now = (c.sha256, len(c.frames), c.frames.shape[1])
        if known is not None and (known["sha256"], known["frames"], known["size"]) != now:
            raise InputError(
                f"{out_dir} holds results of another version of clip {c.name} (other file, "
                "--max-frames or model resolution): use another --out folder"
            )
        clips_info[c.name] = {
            "source": c.path,
            "sha256": c.sha256,
            "frames": len(c.frames),
            "fps": f"{c.fps.numerator}/{c.fps.denominator}",
            "duration_s": c.duration,
            "size": c.frames.shape[1],
        }
    machine = machine_info(device)
    machines = [m for m in old.get("machines", []) if m != machine] + [machine]
    run = {
        "weights": str(weights) if weights is not None else None,
        "weights_id": wid,
        "model": {"image_size": model.cfg.image_size, "num_kp": model.cfg.num_kp},
        "code_commit": git_commit(),
        "code_dirty": git_dirty(),
        "started": old.get("started", time.strftime("%Y-%m-%d %H:%M:%S %z")),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "clips": clips_info,
        "machines": machines,
        "subsets": {**old.get("subsets", {}), **{k: list(v) for k, v in (subsets or {}).items()}},
    }
    write_json_atomically(path, run)
    return run


def _work_gitignore(work: Path) -> None:
    # Crops and their landmarks are large and derived from the clips: never committed.
    work.mkdir(parents=True, exist_ok=True)
    ignore = work / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")


def _job(
    point: Point,
    clip: PreparedClip,
    model: ImplicitWarpingModel,
    out_dir: Path,
    work: Path,
    scorers: Scorers,
) -> JobOutput:
    if isinstance(point, OurPoint):
        out = run_ours(point, clip, model, out_dir / "streams")
        fields = keyframe_fidelity(out_dir / out.fields["stream"], out.decoded, clip, scorers)
        return JobOutput(out.decoded, {**out.fields, **fields})
    if isinstance(point, ClassicPoint):
        return run_classic(point, clip, work / "tmp")
    if isinstance(point, KeyframeOnlyPoint):
        return run_keyframe_only(point, clip)
    raise TypeError(f"not an operating point: {point!r}")


@contextlib.contextmanager
def folder_lock(out_dir: Path, work: Path):
    """Hold ``work/.eval.lock`` for the run: two runs appending to one results.json would
    overwrite each other's records."""
    with open(work / ".eval.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"another `iwcodec eval` is writing to {out_dir}") from None
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def run_eval(
    config: EvalConfig,
    model: ImplicitWarpingModel,
    weights: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalRun:
    """Run every (point, clip) job of ``config`` not already in ``config.out_dir``."""
    if not config.clips:
        raise InputError("no clips to evaluate")
    for c in config.clips:
        if not Path(c).is_file():
            raise InputError(f"{c}: no such file")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(config.work_dir) if config.work_dir is not None else out_dir / "work"
    _work_gitignore(work)
    with folder_lock(out_dir, work):
        return _run_locked(config, model, weights, log, out_dir, work)


def _run_locked(
    config: EvalConfig,
    model: ImplicitWarpingModel,
    weights: str | Path | None,
    log: Callable[[str], None] | None,
    out_dir: Path,
    work: Path,
) -> EvalRun:
    say = log if log is not None else (tqdm.write if config.progress else (lambda _: None))
    device = next(model.parameters()).device
    store = ResultStore(out_dir)
    check_weights(out_dir, model, store, config.replace_ours, say)

    clips = []
    for path, name in zip(config.clips, clip_names([Path(c) for c in config.clips])):
        start = time.perf_counter()
        clip = prepare_clip(
            path, name, model.cfg.image_size, work / "clips", config.max_frames, config.with_akd
        )
        say(
            f"clip {name}: {len(clip.frames)} frames at {float(clip.fps):g} fps "
            f"({time.perf_counter() - start:.1f} s to prepare)"
        )
        clips.append(clip)
    record_run(out_dir, model, weights, clips, device, config.subsets)

    jobs = [(p, c) for p in config.plan for c in clips]
    todo = [(p, c) for p, c in jobs if not store.done(p.key, c.name)]
    skipped = len(jobs) - len(todo)
    if skipped:
        say(f"{skipped} of {len(jobs)} records already in {store.path}: skipped")
    scorers = Scorers.load(device)
    failures: list[dict[str, str]] = []
    bar = tqdm(
        total=len(jobs),
        initial=skipped,
        desc="eval",
        unit="job",
        disable=None if config.progress else True,
    )
    with bar:
        for point, clip in todo:
            start = time.perf_counter()
            try:
                out = _job(point, clip, model, out_dir, work, scorers)
                metrics = score(clip, out.decoded, scorers, device, config.metrics_batch)
            except IWCodecError as exc:
                failures.append({"key": point.key, "clip": clip.name, "error": str(exc)})
                say(f"FAILED {point.key} on {clip.name}: {exc}")
                bar.update(1)
                continue
            record, per_frame = make_record(point, clip, out, metrics, str(device))
            record["job_s"] = time.perf_counter() - start
            store.add(record, per_frame)
            bar.update(1)
            say(
                f"{point.key} {clip.name}: {record['kbps']:.2f} kbps, LPIPS {record['lpips']:.4f}, "
                f"PSNR {_fmt(record['psnr'])} dB ({record['job_s']:.0f} s)"
            )
    if failures:
        write_json_atomically(out_dir / "failed.json", failures)
    elif (out_dir / "failed.json").exists():
        (out_dir / "failed.json").unlink()
    if config.report:
        write_report(out_dir)
    return EvalRun(store.records, len(todo) - len(failures), skipped, failures)


def add_akd(
    out_dir: str | Path,
    clips: Sequence[str | Path],
    model: ImplicitWarpingModel,
    log: Callable[[str], None] = print,
) -> int:
    """Fill in AKD where a run was made without it (``--no-akd``, e.g. on a GPU machine that
    has no MediaPipe): our points from the streams the run kept, the keyframe-only baseline
    by coding its keyframes again (checked against the recorded sizes). Classic codecs'
    records are left without AKD (their output is not kept). Returns records updated.

    Needs the clips' crop cache (``out_dir/work/clips``, made here if absent)."""
    out_dir = Path(out_dir)
    store = ResultStore(out_dir)
    by_name = dict(zip(clip_names([Path(c) for c in clips]), clips))
    todo = [r for r in store.records if r.get("akd") is None]
    updated = 0
    prepared: dict[str, PreparedClip] = {}
    for record in todo:
        name = record["clip"]
        if name not in by_name:
            raise InputError(f"{out_dir}: no clip named {name} among the inputs")
        if name not in prepared:
            prepared = {
                name: prepare_clip(
                    by_name[name], name, model.cfg.image_size, out_dir / "work" / "clips"
                )
            }
        clip = prepared[name]
        if record["codec"] == KEYFRAME_ONLY:
            params = record["params"]
            point = KeyframeOnlyPoint(
                parse_codec(params["keyframe_codec"]),
                params["keyframe_quality"],
                params["keyframes"],
            )
            out = run_keyframe_only(point, clip)
            if out.fields["keyframe_bytes"] != record["keyframe_bytes"]:
                raise IWCodecError(f"{record['key']} on {name}: the keyframes coded again differ")
            decoded = out.decoded
        elif record.get("stream"):
            decoded, _ = decode_frames(
                out_dir / record["stream"], model, DecodeOptions(progress=False)
            )
        else:
            continue
        result = akd_from_landmarks(clip.landmarks, face_landmarks(decoded))
        record.update(
            akd=json_number(result.mean),
            akd_frames=result.frames,
            akd_no_face_ref=result.no_face_ref,
            akd_no_face_test=result.no_face_test,
        )
        if record.get("per_frame"):
            path = out_dir / record["per_frame"]
            arrays = dict(np.load(path)) | {"akd": result.per_frame.astype(np.float32)}
            tmp = path.with_name(f".{path.stem}.part.npz")
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
        write_json_atomically(store.path, store.records)
        updated += 1
        log(f"{record['key']} {name}: AKD {result.mean:.2f} px")
    write_report(out_dir)
    return updated


def _fmt(x: float | None) -> str:
    return "inf" if x is None else f"{x:.2f}"


def write_report(out_dir: str | Path) -> list[Path]:
    """summary.md, HEADLINE.md and the RD plots of a results folder, from results.json alone."""
    from eval.plots import write_plots
    from eval.summary import write_summary

    return [*write_summary(out_dir), *write_plots(out_dir)]


__all__ = [
    "EvalConfig",
    "add_akd",
    "EvalRun",
    "JobOutput",
    "PreparedClip",
    "machine_info",
    "make_record",
    "prepare_clip",
    "run_classic",
    "run_eval",
    "run_keyframe_only",
    "run_ours",
    "score",
    "write_report",
]
