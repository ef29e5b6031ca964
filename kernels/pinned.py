"""Pinned launch configurations of the fused forward at the codec's own shapes.

Why: at 256 px (q = 4096, k = 4096 N + 400, D = 128) the autotuner's choice changed from one
process to the next and with it the kernel's time (0.15 to 0.39 ms over five fresh processes,
results/attention_spread/). The forward therefore launches a fixed configuration at the
shapes the codec runs, chosen once by ``python -m benchmarks.tune`` from the
median over several fresh processes, and committed here as data
(``kernels/pinned_table.py``). Shapes outside the table keep the autotuner.

A configuration is a (BLOCK_M, BLOCK_N, warps, stages) tile plus the key-split count; it is
pinned per compile target (``sm_90`` for Hopper), so another GPU generation never inherits
a tile tuned for this one. ``interpreter`` is the target of triton's interpreter (tests).

This module imports neither triton nor CUDA state at import time.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass

import torch

#: Fields of a table row that identify the shape (the rest is the launch, and provenance).
SHAPE_FIELDS = ("target", "lq", "lk", "d", "dv", "dp", "dtype")
LAUNCH_FIELDS = ("block_m", "block_n", "num_warps", "num_stages", "num_splits")


@dataclass(frozen=True)
class ShapeKey:
    """One forward problem: compile target, lengths, widths and input dtype."""

    target: str  # "sm_90", "interpreter"
    lq: int
    lk: int
    d: int
    dv: int
    dp: int
    dtype: str  # "float32", "bfloat16", "float16"


@dataclass(frozen=True)
class PinnedLaunch:
    """How the forward launches at a pinned shape."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    num_splits: int

    def check(self) -> None:
        """ValueError unless the blocks are powers of two >= 16 and the counts positive."""
        for name in ("block_m", "block_n"):
            val = getattr(self, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {val}")
        for name in ("num_warps", "num_stages", "num_splits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def parse_rows(rows: Iterable[Mapping[str, object]]) -> dict[ShapeKey, PinnedLaunch]:
    """Table rows (dicts with :data:`SHAPE_FIELDS` and :data:`LAUNCH_FIELDS`; other fields,
    such as the measured time, are provenance) -> lookup table. ValueError on a bad row or a
    shape pinned twice."""
    table: dict[ShapeKey, PinnedLaunch] = {}
    for row in rows:
        key = ShapeKey(**{f: row[f] for f in SHAPE_FIELDS})
        launch = PinnedLaunch(**{f: int(row[f]) for f in LAUNCH_FIELDS})
        launch.check()
        if key in table:
            raise ValueError(f"shape pinned twice: {key}")
        table[key] = launch
    return table


@functools.lru_cache(maxsize=1)
def committed() -> dict[ShapeKey, PinnedLaunch]:
    """The committed table (``kernels/pinned_table.py``)."""
    from kernels import pinned_table

    return parse_rows(pinned_table.ENTRIES)


# Tests install rows here (e.g. a pinned shape for the interpreter); looked up first.
_overrides: dict[ShapeKey, PinnedLaunch] = {}
# Benchmarks time the autotuner's own choice against the pins (see :func:`bypass`).
_bypassed = False


def install(rows: Iterable[Mapping[str, object]]) -> None:
    """Pin more shapes in this process (tests, a table being tuned); replaces earlier ones."""
    _overrides.clear()
    _overrides.update(parse_rows(rows))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=8)
def cuda_target(index: int) -> str:
    """``sm_<major><minor>`` of a CUDA device (the table's target)."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


@contextlib.contextmanager
def bypass() -> Iterator[None]:
    """No shape is pinned inside this block (benchmarks: the autotuner's choice, as before)."""
    global _bypassed
    before, _bypassed = _bypassed, True
    try:
        yield
    finally:
        _bypassed = before


def lookup(key: ShapeKey) -> PinnedLaunch | None:
    """The pinned launch of this shape, or None (the autotuner decides)."""
    if _bypassed:
        return None
    found = _overrides.get(key)
    return found if found is not None else committed().get(key)


def format_table(rows: list[dict[str, object]], provenance: dict[str, object]) -> str:
    """Source of ``kernels/pinned_table.py`` for these rows (written by the tuner). The data
    sits in JSON strings, one row a line, so the formatter leaves the file as written."""
    parse_rows(rows)  # refuse to write a table that would not load
    lines = ",\n".join(json.dumps(r) for r in rows)
    return (
        '"""Pinned launches of the fused attention forward (data; see kernels/pinned.py).\n\n'
        "Written by ``python -m benchmarks.tune --write-table``; change it by rerunning that on\n"
        'the GPU the target names, not by hand."""\n\n'
        "import json\n\n"
        f'PROVENANCE = json.loads(\n    """\n{json.dumps(provenance, indent=1, sort_keys=True)}\n"""\n)\n\n'
        f'ENTRIES = json.loads(\n    """\n[\n{lines}\n]\n"""\n)\n'
    )


def as_row(key: ShapeKey, launch: PinnedLaunch, **extra: object) -> dict[str, object]:
    """One table row: the shape, the launch, then provenance fields (e.g. median_ms)."""
    return {**asdict(key), **asdict(launch), **extra}


__all__ = [
    "LAUNCH_FIELDS",
    "SHAPE_FIELDS",
    "PinnedLaunch",
    "ShapeKey",
    "as_row",
    "bypass",
    "committed",
    "cuda_target",
    "dtype_name",
    "format_table",
    "install",
    "lookup",
    "parse_rows",
]
