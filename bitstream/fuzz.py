"""Mutation fuzzing of the bitstream parser and keypoint decoder (``iwcodec fuzz``).

Builds a corpus of valid streams, then feeds mutated inputs (bit flips, byte overwrites,
truncations, splices of two streams, inserted/deleted/duplicated runs, random unit lengths,
inserted start codes, units re-CRC'd after mutating their body so the body parsers and the
range decoder see damage the CRC would have caught, and pure garbage) and structure-aware
forgeries with valid CRCs (keypoint, no-face and end units re-built with forged indices,
counts, refs, flags and timestamps; hostile streams of resync units far apart, issue 17 row 4)
through ``read_units``, ``parse_packet``, a ``KeypointDecoder`` and the frame budget that
``iwcodec decode`` and ``info`` apply (``bitstream.budget.FrameBudget``): the frames a decoder
would output are counted per input, and more than the budget's ``2 * decoded + max_gap`` is a
failure.

Every input runs in a worker process watched by the parent (:func:`run_fuzz`): an input that
takes longer than ``timeout`` seconds is a hang, a worker whose RSS exceeds ``rss_mb`` is
killed and counted; both restart the worker after that input. Exceptions outside
``IWCodecError`` are crashes. Input number ``i`` is ``mutate(corpus, spans, seed, i)``, so any
of them can be replayed; the offending ones are also saved under ``FuzzOptions.out``.
"""

from __future__ import annotations

import collections
import io
import multiprocessing as mp
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from bitstream import (
    BitstreamWarning,
    EndUnit,
    Fill,
    ImageCodec,
    KeyframeUnit,
    KeypointDecoder,
    KeypointEncoder,
    KeypointFrame,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    StreamWriter,
    encode_track,
    load_prior,
    parse_packet,
    parse_unit,
    read_units,
)
from bitstream.budget import FrameBudget
from bitstream.synthetic import example_params, example_stream, forged_gap_stream, synthetic_track
from bitstream.units import MAX_FRAME_INDEX, MAX_UNIT_FRAMES, START_CODE, split_unit
from bitstream.wire import encode_uvarint
from iwcodec.errors import IWCodecError

MUTATORS = (
    "flip",
    "overwrite",
    "truncate",
    "splice",
    "insert",
    "delete",
    "duplicate",
    "length",
    "startcode",
    "recrc",
    "garbage",
    "forge",
    "gaps",
)


def build_corpus(seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    model = load_prior()
    corpus = []
    for frames, k, fpu, period in [(24, 20, 6, 12), (10, 3, 1, 4), (60, 20, 30, 30), (9, 1, 3, 6)]:
        data, _ = example_stream(rng, frames, k, fpu, period, model)
        corpus.append(data)
    corpus.append(_faces_come_and_go(rng, model))
    return corpus


def _faces_come_and_go(rng: np.random.Generator, model) -> bytes:
    """A valid stream as the sender writes one where the face leaves and comes back: a
    keyframe, 12 face frames, 7 NO_FACE frames (one with explicit timestamps), a second
    keyframe, 10 face frames from it (a resync unit first), the end unit."""
    params = example_params(model, 20)
    track = synthetic_track(rng, 29, 20)  # (29, K, 3)
    encoder = KeypointEncoder(params, model, resync_period=8)
    out = io.BytesIO()
    writer = StreamWriter(out)
    writer.write(params)
    writer.write(KeyframeUnit(0, 0, ImageCodec.WEBP, rng.bytes(40)))
    first = [KeypointFrame(i, params.nominal_pts(i), track[i], (0,)) for i in range(12)]
    for unit in encode_track(first, encoder, 5):
        writer.write(unit)
    writer.write(NoFaceUnit(12, 4, Fill.BLANK))
    pts = tuple(params.nominal_pts(16) + 7 * k for k in range(3))
    writer.write(NoFaceUnit(16, 3, Fill.HOLD, pts))
    writer.write(KeyframeUnit(1, 19, ImageCodec.WEBP, rng.bytes(40)))
    encoder.request_resync()
    second = [KeypointFrame(i, params.nominal_pts(i), track[i], (1,)) for i in range(19, 29)]
    for unit in encode_track(second, encoder, 4):
        writer.write(unit)
    writer.finish()
    return out.getvalue()


def _unit_spans(data: bytes) -> list[tuple[int, int]]:
    spans, at = [], 0
    while at < len(data):
        raw, _ = split_unit(memoryview(data)[at:])
        spans.append((at, raw.size))
        at += raw.size
    return spans


def mutate(corpus: list[bytes], spans: list[list[tuple[int, int]]], seed: int, index: int) -> bytes:
    """Input number ``index``: deterministic in (seed, index), so any input can be replayed."""
    rng = np.random.default_rng([seed, index])
    which = int(rng.integers(len(corpus)))
    data = bytearray(corpus[which])
    kind = MUTATORS[index % len(MUTATORS)]
    n = len(data)
    rounds = 1 + int(rng.integers(3)) if kind not in ("recrc", "garbage") else 1
    for _ in range(rounds):
        n = len(data)
        if n == 0:
            break
        at = int(rng.integers(n))
        if kind == "flip":
            for _ in range(1 + int(rng.integers(8))):
                data[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
        elif kind == "overwrite":
            width = int(rng.integers(1, 9))
            data[at : at + width] = rng.bytes(width)
        elif kind == "truncate":
            data = data[: int(rng.integers(n + 1))]
        elif kind == "splice":
            other = corpus[int(rng.integers(len(corpus)))]
            data = data[:at] + other[int(rng.integers(len(other))) :]
        elif kind == "insert":
            data[at:at] = rng.bytes(int(rng.integers(1, 64)))
        elif kind == "delete":
            del data[at : at + int(rng.integers(1, 64))]
        elif kind == "duplicate":
            width = int(rng.integers(1, 128))
            data[at:at] = data[at : at + width]
        elif kind == "length":
            # Replace a unit's length field with a random (often huge or overlong) varint.
            start, _ = spans[which][int(rng.integers(len(spans[which])))]
            if start + 5 <= len(data):
                value = int(rng.choice([0, 1, 127, 128, 2**14, 2**21, 2**28, 2**35]))
                value += int(rng.integers(-2, 3)) if value > 2 else 0
                field = encode_uvarint(max(value, 0))
                if rng.random() < 0.2:
                    field = b"\xff" * int(rng.integers(1, 12))
                data[start + 4 : start + 5] = field
        elif kind == "startcode":
            data[at:at] = START_CODE + rng.bytes(int(rng.integers(0, 6)))
        elif kind == "recrc":
            data = bytearray(_mutate_body_keep_crc(bytes(data), spans[which], rng))
        elif kind == "garbage":
            data = bytearray(rng.bytes(int(rng.integers(0, 512))))
            if rng.random() < 0.5:
                data[0:0] = corpus[which][: int(rng.integers(40))]
        elif kind == "forge":
            try:
                data = bytearray(_forge_unit(bytes(data), rng))
            except IWCodecError:  # an earlier round left no unit to re-build
                pass
        elif kind == "gaps":
            data = bytearray(_hostile_gaps(corpus[which], rng))
            break
    return bytes(data)


def _index(rng: np.random.Generator, near: int, count: int) -> int:
    """A forged frame index: near the true one, far ahead, behind, or at the top of the range."""
    top = MAX_FRAME_INDEX - count + 1
    choice = rng.random()
    if choice < 0.4:
        value = near + int(rng.integers(-3, 4))
    elif choice < 0.7:
        value = near + int(rng.choice([60, 1000, 2000, 2**16, 2**24]))
    elif choice < 0.85:
        value = int(rng.integers(0, max(1, near + 1)))
    else:
        value = top - int(rng.integers(0, 3))
    return min(max(value, 0), top)


def _forge_unit(data: bytes, rng: np.random.Generator) -> bytes:
    """Re-build one keypoint, no-face or end unit with forged fields (and a valid CRC), or
    insert a forged no-face unit: the structure the parsers accept, the meaning a liar picks."""
    spans = _unit_spans(data)
    units = [(at, size, parse_unit(data[at : at + size])[0]) for at, size in spans]
    kinds = [
        k for k, (_, _, u) in enumerate(units) if isinstance(u, (KeypointUnit, NoFaceUnit, EndUnit))
    ]
    if not kinds:
        return data
    at, size, unit = units[kinds[int(rng.integers(len(kinds)))]]
    if isinstance(unit, EndUnit):
        total = int(rng.choice([0, unit.total_frames + 1, 2**20, 2**32]))
        forged = EndUnit(total, int(rng.integers(0, 3)))
    elif isinstance(unit, KeypointUnit) and rng.random() < 0.7:
        count = unit.count if rng.random() < 0.5 else int(rng.integers(1, MAX_UNIT_FRAMES + 1))
        refs = (
            unit.refs
            if rng.random() < 0.7
            else tuple(int(r) for r in rng.integers(0, 5, 1 + int(rng.integers(3))))
        )
        pts = None
        if rng.random() < 0.2:
            pts = tuple(
                int(p)
                for p in np.cumsum(rng.integers(1, 5000, count)) - int(rng.integers(0, 2**20))
            )
        resync = unit.resync if rng.random() < 0.7 else not unit.resync
        forged = KeypointUnit(
            _index(rng, unit.first_index, count), count, refs, resync, pts, unit.payload
        )
    else:
        count = int(rng.integers(1, MAX_UNIT_FRAMES + 1))
        forged = NoFaceUnit(_index(rng, unit.first_index, count), count, Fill(int(rng.integers(2))))
        if rng.random() < 0.5:  # inserted before the unit rather than in its place
            return data[:at] + forged.to_bytes() + data[at:]
    return data[:at] + forged.to_bytes() + data[at + size :]


def _hostile_gaps(stream: bytes, rng: np.random.Generator) -> bytes:
    """Issue 17, row 4: resync units far apart (and an end unit that may count further),
    with the corpus stream's parameters and keyframe."""
    head = list(read_units(stream))
    params = head[0]
    keyframes = [u for u in head if isinstance(u, KeyframeUnit)][:1]
    return forged_gap_stream(
        params,
        keyframes,
        units=int(rng.integers(1, 400)),
        spacing=int(rng.choice([2, 60, 1800, 2000, 10_000])),
        frames_per_unit=int(rng.integers(1, 4)),
        end_total=None if rng.random() < 0.5 else int(rng.integers(0, 2**32)),
        rng=rng,
    )


def _mutate_body_keep_crc(data: bytes, spans, rng) -> bytes:
    """Damage one unit's body (fields or payload), then fix its length and CRC."""
    start, size = spans[int(rng.integers(len(spans)))]
    raw, _ = split_unit(data[start : start + size])
    body = bytearray(raw.body)
    for _ in range(1 + int(rng.integers(4))):
        choice = rng.random()
        if choice < 0.5 and body:
            body[int(rng.integers(len(body)))] = int(rng.integers(256))
        elif choice < 0.7:
            body[int(rng.integers(len(body) + 1)) :] = rng.bytes(int(rng.integers(0, 16)))
        elif choice < 0.9 and body:
            del body[int(rng.integers(len(body))) :]
        else:
            body[int(rng.integers(len(body) + 1)) : 0] = rng.bytes(int(rng.integers(1, 32)))
    covered = bytes([raw.type_code]) + encode_uvarint(len(body)) + bytes(body)
    unit = START_CODE + covered + zlib.crc32(covered).to_bytes(4, "little")
    return data[:start] + unit + data[start + size :]


def run_one(data: bytes, model, depth: collections.Counter) -> str:
    """Outcome label of one input; raises only for crashes (non-project exceptions).

    ``depth`` counts how far inputs got: units read, keypoint units decoded or lost, warnings.
    """
    outcome = "ok"
    budget = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoder = None
            for unit in read_units(data):
                depth["units_read"] += 1
                if isinstance(unit, ParamsUnit):
                    decoder = KeypointDecoder(unit, model) if unit.entropy_id == model.id else None
                    budget = FrameBudget.for_rate(unit.fps)
                elif isinstance(unit, KeypointUnit) and decoder is not None:
                    try:
                        res = decoder.decode(unit)
                    except ValueError as exc:  # e.g. K in params differs from frames
                        raise AssertionError(f"decoder raised ValueError: {exc}") from exc
                    depth["frames_decoded"] += len(res.frames)
                    depth["frames_lost"] += res.num_lost
                    for frame in res.frames:
                        if not np.all(np.isfinite(frame.keypoints)):
                            raise AssertionError("decoder produced non-finite keypoints")
                    budget.add(len(res.frames), res.lost)
                elif isinstance(unit, NoFaceUnit) and decoder is not None:
                    res = decoder.skip(unit)
                    depth["frames_no_face"] += len(res.no_face)
                    depth["frames_lost"] += res.num_lost
                    budget.add(len(res.no_face), res.lost)
                elif isinstance(unit, EndUnit) and decoder is not None:
                    budget.add(0, decoder.finish(unit.total_frames).lost)
        except IWCodecError as exc:
            outcome = type(exc).__name__
        if budget is not None:
            # What a decoder would have output before it stopped; the budget's promise.
            if budget.frames > 2 * budget.decoded + budget.max_gap:
                raise AssertionError(f"{budget.frames} frames out of {budget.decoded} decoded")
            depth["frames_out"] += budget.frames
            depth["max_frames_per_byte_x1000"] = int(1000 * budget.frames / max(1, len(data)))
        try:
            parse_packet(data)
        except IWCodecError:
            pass
    depth["warnings"] += len(caught)
    depth["inputs_with_warnings"] += bool(caught)
    others = [w for w in caught if not issubclass(w.category, BitstreamWarning)]
    if others:
        raise AssertionError(
            f"unexpected warning {others[0].category.__name__}: {others[0].message}"
        )
    return outcome


def worker(conn: Connection, seed: int, indices: list[int]) -> None:
    """A worker process: runs inputs ``indices`` and sends ``(index, outcome, detail)`` each."""
    corpus = build_corpus()
    spans = [_unit_spans(c) for c in corpus]
    model = load_prior()
    conn.send((None, "ready", None))  # the parent times inputs from here, not from the spawn
    for i in indices:
        data = mutate(corpus, spans, seed, i)
        depth: collections.Counter[str] = collections.Counter()
        try:
            start = time.perf_counter()
            outcome = run_one(data, model, depth)
            depth["max_input_ms"] = round(1e3 * (time.perf_counter() - start), 1)
            conn.send((i, outcome, dict(depth)))
        except Exception as exc:  # noqa: BLE001 -- the fuzzer's job is to catch anything
            conn.send((i, "crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    conn.send((None, "done", None))


def _rss_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class FuzzOptions:
    """What ``iwcodec fuzz`` runs: ``inputs`` inputs over ``workers`` processes."""

    inputs: int = 100_000
    workers: int = 2
    seed: int = 1
    timeout: float = 5.0  # seconds one input may take before it counts as a hang
    rss_mb: float = 1024.0  # resident memory a worker may reach before it is killed
    out: Path = Path(".cache/fuzz")  # where crashing, hanging or memory-hungry inputs go


@dataclass
class _Tally:
    """Outcomes and depth counters of the inputs run so far."""

    outcomes: collections.Counter = field(default_factory=collections.Counter)
    by_mutator: collections.Counter = field(default_factory=collections.Counter)
    depth: collections.Counter = field(default_factory=collections.Counter)
    crashes: list = field(default_factory=list)  # (index, traceback text)
    hangs: list = field(default_factory=list)  # indices
    memory: list = field(default_factory=list)  # indices
    slowest_ms: float = 0.0
    per_byte: float = 0.0  # most frames a decoder would output per input byte
    peak_kb: int = 0

    def record(self, i: int, outcome: str, detail) -> None:
        self.outcomes[outcome] += 1
        if isinstance(detail, dict):
            self.slowest_ms = max(self.slowest_ms, detail.pop("max_input_ms"))
            self.per_byte = max(self.per_byte, detail.pop("max_frames_per_byte_x1000", 0) / 1000)
            self.depth.update(detail)
        self.by_mutator[f"{MUTATORS[i % len(MUTATORS)]}:{outcome}"] += 1
        if outcome in ("crash", "died"):
            self.crashes.append((i, detail))

    def killed(self, i: int, hang: bool) -> None:
        (self.hangs if hang else self.memory).append(i)
        self.outcomes["hang" if hang else "memory"] += 1

    def bad(self) -> list[tuple[int, str]]:
        """Every input that crashed, hung or ran out of memory, with what happened."""
        return (
            [(i, str(detail)) for i, detail in self.crashes]
            + [(i, "hang") for i in self.hangs]
            + [(i, "memory") for i in self.memory]
        )

    def summary(self, seconds: float) -> dict:
        fine = ("ok", "crash", "died", "hang", "memory")
        return {
            "inputs": sum(self.outcomes.values()),
            "complete_reads": self.outcomes["ok"],
            "project_errors": {k: v for k, v in self.outcomes.items() if k not in fine},
            "crashes": self.outcomes["crash"] + self.outcomes["died"],
            "hangs": self.outcomes["hang"],
            "memory_kills": self.outcomes["memory"],
            "peak_rss_mb": round(self.peak_kb / 1024, 1),
            "slowest_input_ms": self.slowest_ms,
            "max_frames_out_per_byte": self.per_byte,
            "depth": dict(self.depth),
            "seconds": round(seconds, 1),
            # Replay one with mutate(build_corpus(), spans, seed, index); also saved under out.
            "bad_inputs": [[i, "crash"] for i, _ in self.crashes]
            + [[i, "hang"] for i in self.hangs]
            + [[i, "memory"] for i in self.memory],
            "per_mutator": dict(sorted(self.by_mutator.items())),
        }


class _Pool:
    """The worker processes, each with the inputs it still has to run, and the time its
    current input started (a worker that sends nothing for ``timeout`` seconds is hung)."""

    def __init__(self, options: FuzzOptions) -> None:
        self.options = options
        self.ctx = mp.get_context("spawn")
        n = options.workers
        self.pending = [list(range(w, options.inputs, n)) for w in range(n)]
        self.live: dict[int, tuple] = {}  # worker -> (process, connection, input start time)
        for w in range(n):
            self.launch(w)

    def launch(self, w: int) -> None:
        if not self.pending[w]:
            return
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=worker, args=(child, self.options.seed, self.pending[w]), daemon=True
        )
        proc.start()
        child.close()
        self.live[w] = (proc, parent, time.perf_counter())

    def restart_after(self, w: int, i: int) -> None:
        """Kill worker ``w``, drop input ``i`` and everything before it, start a new one."""
        proc = self.live.pop(w)[0]
        proc.kill()
        proc.join()
        self.pending[w] = self.pending[w][self.pending[w].index(i) + 1 :]
        self.launch(w)

    def receive(self, tally: _Tally) -> None:
        """Take the messages the workers sent in the next quarter second."""
        conns = {parent: w for w, (_, parent, _) in self.live.items()}
        for conn in wait(list(conns), timeout=0.25):
            w = conns[conn]
            proc, parent, _ = self.live[w]
            try:
                i, outcome, detail = conn.recv()
            except EOFError:
                i, outcome, detail = (self.pending[w] or [None])[0], "died", "worker died"
            if outcome == "done" or i is None and outcome != "ready":
                proc.join()
                del self.live[w]
                continue
            self.live[w] = (proc, parent, time.perf_counter())
            if outcome == "ready":
                continue
            tally.record(i, outcome, detail)
            if outcome == "died":
                self.restart_after(w, i)
            else:
                self.pending[w] = self.pending[w][self.pending[w].index(i) + 1 :]

    def watch(self, tally: _Tally) -> None:
        """Kill (and count) a worker stuck on one input or over its memory bound."""
        now = time.perf_counter()
        for w, (proc, _parent, last) in list(self.live.items()):
            tally.peak_kb = max(tally.peak_kb, _rss_kb(proc.pid, "VmHWM"))
            if not self.pending[w]:
                continue  # its last input is answered; "done" follows
            rss = _rss_kb(proc.pid, "VmRSS")
            stuck = now - last > self.options.timeout
            if stuck or rss > self.options.rss_mb * 1024:
                i = self.pending[w][0]
                tally.killed(i, hang=stuck)
                self.restart_after(w, i)


def save_bad_inputs(bad: list[tuple[int, str]], seed: int, out: Path, limit: int = 50) -> None:
    """``input_<i>.bin`` (the input) and ``input_<i>.txt`` (what happened) for each bad input."""
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus()
    spans = [_unit_spans(c) for c in corpus]
    for i, detail in bad[:limit]:
        (out / f"input_{i}.bin").write_bytes(mutate(corpus, spans, seed, i))
        (out / f"input_{i}.txt").write_text(detail)


def run_fuzz(options: FuzzOptions) -> dict:
    """Run ``options.inputs`` inputs; the summary (counts, depth, peak RSS, bad inputs).

    Nothing went wrong when ``summary["bad_inputs"]`` is empty."""
    if options.inputs < 1 or options.workers < 1:
        raise ValueError("run_fuzz needs at least one input and one worker")
    start = time.perf_counter()
    tally = _Tally()
    pool = _Pool(options)
    while pool.live:
        pool.receive(tally)
        pool.watch(tally)
    bad = tally.bad()
    if bad:
        save_bad_inputs(bad, options.seed, options.out)
    return tally.summary(time.perf_counter() - start)
