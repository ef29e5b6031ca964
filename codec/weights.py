"""Model weights: safetensors files carrying their own config; never a pickle.

A weights file stores every tensor of :class:`~codec.model.ImplicitWarpingModel` plus, in the
safetensors metadata, ``format`` (``iwcodec-weights``), ``format_version`` and ``config`` (the
JSON of :class:`~codec.config.ModelConfig`; a file written before a zero-start refinement
loads with that refinement at its start, see :func:`load_tensors`). Its *weights id* is the
first 8 bytes of the SHA-256 of the file: the bitstream's parameter unit carries it, so a
receiver holding other weights refuses a stream instead of rebuilding garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from codec.config import ModelConfig, read_stored_config
from codec.model import REFINEMENT_LAYERS, ImplicitWarpingModel
from iwcodec.errors import ModelMismatchError

FORMAT = "iwcodec-weights"
FORMAT_VERSION = "1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "iwcodec-256.safetensors"


def weights_id(path: str | Path) -> bytes:
    """First 8 bytes of the SHA-256 of the weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()[:8]


def save_weights(
    model: ImplicitWarpingModel,
    path: str | Path,
    dtype: torch.dtype = torch.float16,
    extra: dict | None = None,
) -> bytes:
    """Write the model's tensors (cast to ``dtype``) and config; returns the weights id."""
    tensors = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json()}
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return weights_id(path)


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelMismatchError(f"{path}: not a readable safetensors weights file ({e})") from None


def read_config(path: str | Path) -> tuple[ModelConfig, tuple[str, ...]]:
    """A weights file's model config and the zero-start refinements it predates
    (codec.config.read_stored_config), without reading its tensors.

    Raises ModelMismatchError when the file is missing, unreadable, of another format, or its
    config is not one this version's model can take."""
    path = Path(path)
    if not path.is_file():
        raise ModelMismatchError(f"weights file not found: {path}")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ModelMismatchError(
            f"{path}: not an iwcodec weights file (format {meta.get('format')!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelMismatchError(
            f"{path}: weights format version {meta.get('format_version')!r}, this build reads {FORMAT_VERSION}"
        )
    try:
        return read_stored_config(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelMismatchError(f"{path}: invalid model config in weights ({e})") from None


def read_weights(path: str | Path) -> tuple[ModelConfig, tuple[str, ...], dict]:
    """:func:`read_config`, and the file's tensors by state-dict key."""
    cfg, predates = read_config(path)
    return cfg, predates, load_file(str(path))


def load_tensors(
    model: ImplicitWarpingModel, state: dict, predates: tuple[str, ...], path: str | Path
) -> None:
    """Copy a weights file's tensors (:func:`read_weights`) into ``model``, cast to its dtypes.

    Every tensor of the model must be there, with its shape, except the layers of the
    refinements the file predates (codec.model.REFINEMENT_LAYERS): they keep their start,
    which renders as the file's weights did. Raises ModelMismatchError otherwise."""
    own = model.state_dict()
    grown = tuple(prefix for name in predates for prefix in REFINEMENT_LAYERS[name])
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(grown))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        raise ModelMismatchError(
            f"{path}: weights do not match their model config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]})"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    expected_config: ModelConfig | None = None,
    attention_backend: str = "auto",
) -> ImplicitWarpingModel:
    """Build the model from a weights file (default: the shipped weights), in eval mode.

    Raises ModelMismatchError when the file is missing, unreadable, of another format, or its
    tensors do not match its config (or ``expected_config``).
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    cfg, predates, state = read_weights(path)
    if expected_config is not None and cfg != expected_config:
        raise ModelMismatchError(
            f"{path}: weights were trained for another model config than the one requested"
        )
    model = ImplicitWarpingModel(cfg, attention_backend=attention_backend)
    load_tensors(model, state, predates, path)
    model.weights_id = weights_id(path)
    model.weights_path = path
    return model.to(device).eval()


def average_weights(paths: list[str | Path], out: str | Path) -> bytes:
    """Write the uniform average of several weights files of one config; returns its id.

    A "model soup" (Wortsman et al., ICML 2022, "uniform soup"): fine-tuned siblings that share
    an initialisation sit in one basin of the loss, and the mean of their parameters often
    scores better than each of them, at no cost at inference. Floating tensors are averaged in
    float32 and stored in float16 like any weights file; integer buffers (batch-norm counters)
    are taken from the first file. Raises ModelMismatchError when the files' configs differ.
    """
    if not paths:
        raise ValueError("average_weights needs at least one weights file")
    models = [load_model(paths[0])]
    models += [load_model(p, expected_config=models[0].cfg) for p in paths[1:]]
    states = [m.state_dict() for m in models]
    mean = {
        k: (sum(s[k] for s in states) / len(states) if v.is_floating_point() else v)
        for k, v in states[0].items()
    }
    soup = models[0]
    soup.load_state_dict(mean)
    sources = [{"file": Path(p).name, "id": m.weights_id.hex()} for p, m in zip(paths, models)]
    return save_weights(soup, out, extra={"averaged_from": sources})
