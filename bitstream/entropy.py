"""The keypoint entropy model: prior tables, their adaptive state and the range coder proxy.

Only this module touches constriction (Bamler 2022, "Understanding Entropy Coding With
Asymmetric Numeral Systems (ANS): a Statistician's Perspective"; its queue ``RangeEncoder`` is a
range coder with 32-bit words). Callers see integers in, bytes out.

The *entropy model* (``EntropyModel``) is a set of integer prior count tables:

* ``shift`` ``(3, A)``: per-frame global shift of each channel (x, y, strength),
* ``residual`` ``(3, A)``: per-keypoint residual after prediction and shift,
* ``intra`` ``(3, B)``: coarse buckets of absolute values in frames coded without prediction,

with ``A = 2 * radius + 2`` (residuals ``-radius .. radius`` then an escape symbol). ``shift`` and
``residual`` counts adapt as symbols are coded (``AdaptiveState``); ``intra`` stays fixed. The
model's id is the first 8 bytes of the SHA-256 of its canonical JSON, and a stream names the
id it was coded with (``ParamsUnit.entropy_id``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import constriction
import numpy as np

from bitstream.predict import frame_shift, predict
from bitstream.quant import quantize
from iwcodec.errors import BitstreamError

NUM_CHANNELS = 3  # x, y, strength
FORMAT = "iwcodec-keypoint-entropy-model"
FORMAT_VERSION = 1
MAX_TABLE_FILE = 1 << 20
MAX_RADIUS = 1024
MAX_BUCKETS = 4096
MAX_COUNT = 1 << 24  # counts stay exact in float64 and well inside constriction's precision
DEFAULT_TABLE = "xy512_s64"


@dataclass(frozen=True, eq=False)
class EntropyModel:
    """Prior count tables and adaptation rule of the keypoint coder.

    Attributes:
        radius: residuals in ``[-radius, radius]`` get their own symbol; others escape.
        increment: count added to a symbol each time it is coded.
        limit: when a context's total count exceeds this, all its counts are halved
            (rounding up), so the model keeps adapting instead of freezing.
        shift: ``(3, 2 * radius + 2)`` int64 prior counts of the per-frame shift symbol.
        residual: ``(3, 2 * radius + 2)`` int64 prior counts of per-keypoint residual symbols.
        intra: ``(3, buckets)`` int64 counts of absolute-value buckets in intra frames.
    """

    radius: int
    increment: int
    limit: int
    shift: np.ndarray
    residual: np.ndarray
    intra: np.ndarray

    def __post_init__(self) -> None:
        if not 1 <= self.radius <= MAX_RADIUS:
            raise BitstreamError(f"entropy model: radius {self.radius} out of [1, {MAX_RADIUS}]")
        if not 1 <= self.increment <= 1 << 16:
            raise BitstreamError(f"entropy model: increment {self.increment} out of [1, 65536]")
        if not self.increment * 4 <= self.limit <= MAX_COUNT:
            raise BitstreamError(f"entropy model: limit {self.limit} out of range")
        alphabet = 2 * self.radius + 2
        for name, cols in (("shift", alphabet), ("residual", alphabet), ("intra", None)):
            table = np.asarray(getattr(self, name))
            if table.ndim != 2 or table.shape[0] != NUM_CHANNELS:
                raise BitstreamError(f"entropy model: {name} table must have 3 rows")
            if cols is not None and table.shape[1] != cols:
                raise BitstreamError(f"entropy model: {name} table must have {cols} columns")
            if name == "intra" and not 1 <= table.shape[1] <= MAX_BUCKETS:
                raise BitstreamError(f"entropy model: intra needs 1..{MAX_BUCKETS} buckets")
            if not np.issubdtype(table.dtype, np.integer) or table.min() < 1:
                raise BitstreamError(f"entropy model: {name} counts must be integers >= 1")
            if table.max() > MAX_COUNT:
                raise BitstreamError(f"entropy model: {name} counts must be <= {MAX_COUNT}")
            table = table.astype(np.int64)
            table.setflags(write=False)
            object.__setattr__(self, name, table)

    @property
    def alphabet(self) -> int:
        return 2 * self.radius + 2

    @property
    def escape(self) -> int:
        return 2 * self.radius + 1

    @property
    def buckets(self) -> int:
        return int(self.intra.shape[1])

    def to_bytes(self) -> bytes:
        """Canonical form: JSON with sorted keys, no spaces, integers only, trailing newline."""
        obj = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "radius": self.radius,
            "increment": self.increment,
            "limit": self.limit,
            "shift": self.shift.tolist(),
            "residual": self.residual.tolist(),
            "intra": self.intra.tolist(),
        }
        return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> EntropyModel:
        if len(data) > MAX_TABLE_FILE:
            raise BitstreamError(f"entropy model file larger than {MAX_TABLE_FILE} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BitstreamError(f"entropy model is not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise BitstreamError("not an iwcodec keypoint entropy model")
        if obj.get("version") != FORMAT_VERSION:
            raise BitstreamError(f"entropy model version {obj.get('version')!r} not supported")
        try:
            tables = {}
            for name in ("shift", "residual", "intra"):
                value = obj[name]
                if not isinstance(value, list) or not all(
                    isinstance(row, list) and all(type(v) is int for v in row) for row in value
                ):
                    raise BitstreamError(f"entropy model: {name} must be lists of integers")
                if len({len(row) for row in value}) > 1:
                    raise BitstreamError(f"entropy model: {name} rows differ in length")
                tables[name] = np.array(value, dtype=np.int64)
            scalars = {k: obj[k] for k in ("radius", "increment", "limit")}
        except (KeyError, OverflowError) as exc:
            raise BitstreamError(f"entropy model: bad or missing field {exc}") from None
        if not all(type(v) is int for v in scalars.values()):
            raise BitstreamError("entropy model: radius, increment and limit must be integers")
        return cls(**scalars, **tables)

    @property
    def id(self) -> bytes:
        """8-byte id: SHA-256 of the canonical bytes, truncated."""
        return hashlib.sha256(self.to_bytes()).digest()[:8]

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> EntropyModel:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_TABLE_FILE:
                raise BitstreamError(f"{path}: larger than {MAX_TABLE_FILE} bytes")
            return cls.from_bytes(path.read_bytes())
        except OSError as exc:
            raise BitstreamError(f"cannot read entropy model {path}: {exc}") from None


def load_prior(name: str = DEFAULT_TABLE) -> EntropyModel:
    """A prior shipped in ``bitstream/tables/<name>.json``."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise BitstreamError(f"bad entropy table name {name!r}")
    resource = resources.files("bitstream") / "tables" / f"{name}.json"
    if not resource.is_file():
        raise BitstreamError(f"no shipped entropy table named {name!r}")
    return EntropyModel.from_bytes(resource.read_bytes())


class AdaptiveState:
    """Counts of the adaptive contexts: rows 0-2 shift (x, y, s), rows 3-5 residual (x, y, s).

    Encoder and decoder call ``probabilities`` and ``update`` with the same symbols in the
    same order, so their states stay identical (the range coder is exact).
    """

    SHIFT_ROWS = np.arange(3)
    RESIDUAL_ROWS = np.arange(3, 6)

    def __init__(self, model: EntropyModel) -> None:
        self.model = model
        self.counts = np.concatenate([model.shift, model.residual]).astype(np.int64)  # (6, A)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), A)`` float64 distribution of each listed context."""
        c = self.counts[rows].astype(np.float64)
        return c / c.sum(axis=1, keepdims=True)

    def update(self, rows: np.ndarray, symbols: np.ndarray) -> None:
        np.add.at(self.counts, (rows, symbols), self.model.increment)
        over = self.counts.sum(axis=1) > self.model.limit
        if over.any():
            self.counts[over] = (self.counts[over] + 1) // 2


_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_UNIFORM = constriction.stream.model.Uniform()


class SymbolEncoder:
    """Range encoder that also records every call, so its output can be trimmed and checked.

    ``ideal_bits`` accumulates ``-log2 p`` of every coded symbol under the model that coded it.
    """

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()
        self._ops: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.ideal_bits = 0.0

    def categorical(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """``symbols`` ``(n,)`` each coded with its own row of ``probs`` ``(n, A)``."""
        if len(symbols) == 0:
            return
        symbols = symbols.astype(np.int32)
        self._coder.encode(symbols, _CATEGORICAL, probs)
        self._ops.append(("c", symbols, probs))
        self.ideal_bits -= float(np.log2(probs[np.arange(len(symbols)), symbols]).sum())

    def uniform(self, values: np.ndarray, sizes: np.ndarray) -> None:
        """``values[i]`` uniform in ``[0, sizes[i])``; every size must be >= 2."""
        if len(values) == 0:
            return
        values, sizes = values.astype(np.int32), sizes.astype(np.int32)
        self._coder.encode(values, _UNIFORM, sizes)
        self._ops.append(("u", values, sizes))
        self.ideal_bits += float(np.log2(sizes.astype(np.float64)).sum())

    def finish(self) -> bytes:
        """Coded bytes, as short as an exact decode allows.

        constriction seals its output with a full 32-bit word. Any final word that still lands
        inside the coder's last interval decodes the same, so we try words with more trailing
        zero bytes (which we then drop; the decoder pads with zeros) and keep the shortest one
        that a replay of every decode call proves exact: about 1.7 bytes saved per unit.
        """
        words = self._coder.get_compressed()
        full = words.astype(">u4").tobytes()
        candidates = [full.rstrip(b"\0")]
        if len(words):
            head, last = full[:-4], int(words[-1])
            candidates.append(head.rstrip(b"\0"))
            for k in (3, 2, 1):
                mask = (1 << (8 * k)) - 1
                for word in (last & ~mask, (last | mask) + 1):
                    if word < 1 << 32:
                        candidates.append((head + word.to_bytes(4, "big")).rstrip(b"\0"))
        for cand in sorted(set(candidates), key=len):
            if len(cand) < len(full) and self._replays(cand):
                return cand
        return full

    def _replays(self, data: bytes) -> bool:
        decoder = SymbolDecoder(data)
        try:
            for kind, symbols, params in self._ops:
                if kind == "c":
                    out = decoder.categorical(params)
                else:
                    out = decoder.uniform(params)
                if not np.array_equal(out, symbols):
                    return False
        except BitstreamError:
            return False
        return True


class SymbolDecoder:
    """Mirror of :class:`SymbolEncoder`; coder failures become :class:`BitstreamError`."""

    def __init__(self, data: bytes) -> None:
        padded = bytes(data) + b"\0" * (-len(data) % 4)
        words = np.frombuffer(padded, dtype=">u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def categorical(self, probs: np.ndarray) -> np.ndarray:
        if len(probs) == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            return self._coder.decode(_CATEGORICAL, probs).astype(np.int64)
        # constriction signals invalid data with AssertionError (and may add others): any
        # failure inside the coder means the payload is not what an encoder wrote.
        except Exception as exc:  # noqa: BLE001
            raise BitstreamError(f"keypoint payload does not decode: {exc}") from None

    def uniform(self, sizes: np.ndarray) -> np.ndarray:
        if len(sizes) == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            return self._coder.decode(_UNIFORM, sizes.astype(np.int32)).astype(np.int64)
        except Exception as exc:  # noqa: BLE001
            raise BitstreamError(f"keypoint payload does not decode: {exc}") from None


@dataclass
class CodingStatistics:
    """Symbols the keypoint coder would emit for some tracks, per channel (x, y, strength).

    ``shifts`` and ``residuals`` are signed integers before clamping to the alphabet;
    ``intra`` are absolute quantized values of frames coded without prediction.
    """

    xy_steps: int
    s_steps: int
    shifts: list[np.ndarray]
    residuals: list[np.ndarray]
    intra: list[np.ndarray]


def _histogram(values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(values, minlength=size)[:size].astype(np.float64)


def _scale_counts(hist: np.ndarray, total: int) -> np.ndarray:
    """Histogram -> integer counts summing to about ``total``, each >= 1.

    Adds half a count to every bin first (Krichevsky-Trofimov) so unseen symbols keep a
    probability that depends on how much data backed the table.
    """
    p = (hist + 0.5) / (hist.sum() + 0.5 * len(hist))
    return np.maximum(1, np.rint(p * total)).astype(np.int64)


def fit_prior(
    stats: CodingStatistics,
    *,
    radius: int = 31,
    buckets: int = 32,
    increment: int = 32,
    limit: int = 1 << 16,
    prior_weight: int = 64,
) -> EntropyModel:
    """Prior tables from coder statistics (``collect_statistics`` or your own).

    ``prior_weight`` is how many coded symbols the prior is worth: each adaptive context
    starts with counts summing to about ``prior_weight * increment``. The intra tables are
    static, so they are scaled to ``MAX_COUNT / 16`` to keep their shape precisely.
    """
    alphabet = 2 * radius + 2
    escape = alphabet - 1
    total = prior_weight * increment

    def symbols(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.int64)
        return np.where(np.abs(v) <= radius, v + radius, escape)

    shift = np.stack([_scale_counts(_histogram(symbols(v), alphabet), total) for v in stats.shifts])
    residual = np.stack(
        [_scale_counts(_histogram(symbols(v), alphabet), total) for v in stats.residuals]
    )
    widths = [bucket_width(s, buckets) for s in (stats.xy_steps, stats.xy_steps, stats.s_steps)]
    intra = np.stack(
        [
            _scale_counts(_histogram(np.asarray(v, np.int64) // w, buckets), MAX_COUNT // 16)
            for v, w in zip(stats.intra, widths)
        ]
    )
    return EntropyModel(radius, increment, limit, shift, residual, intra)


def bucket_width(steps: int, buckets: int) -> int:
    """Width of one intra bucket: ``ceil((steps + 1) / buckets)`` quantized values."""
    return -(-(steps + 1) // buckets)


def collect_statistics(
    tracks: Sequence[np.ndarray], xy_steps: int, s_steps: int, predictor: int
) -> CodingStatistics:
    """Run the coder's prediction over float tracks ``(T, K, 3)`` without coding anything."""
    shifts: list[list[np.ndarray]] = [[] for _ in range(NUM_CHANNELS)]
    residuals: list[list[np.ndarray]] = [[] for _ in range(NUM_CHANNELS)]
    intra: list[list[np.ndarray]] = [[] for _ in range(NUM_CHANNELS)]
    steps = (xy_steps, xy_steps, s_steps)
    for track in tracks:
        q = quantize(track, xy_steps, s_steps)  # (T, K, 3)
        for c in range(NUM_CHANNELS):
            intra[c].append(q[:, :, c].ravel())
        for t in range(1, len(q)):
            prev2 = q[t - 2] if t >= 2 else None
            pred = predict(predictor, q[t - 1], prev2, steps)
            r = q[t] - pred  # (K, 3)
            g = frame_shift(r)  # (3,)
            for c in range(NUM_CHANNELS):
                shifts[c].append(g[c : c + 1])
                residuals[c].append(r[:, c] - g[c])
    cat = [np.concatenate(v) if v else np.zeros(0, np.int64) for v in shifts]
    res = [np.concatenate(v) if v else np.zeros(0, np.int64) for v in residuals]
    intr = [np.concatenate(v) if v else np.zeros(0, np.int64) for v in intra]
    return CodingStatistics(xy_steps, s_steps, cat, res, intr)
