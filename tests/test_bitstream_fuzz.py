"""Property-based fuzzing of the parser (a modest number of examples; the 100k-input run is
tools/bitstream_fuzz.py), and a smoke run of that tool."""

from __future__ import annotations

import collections
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitstream import (
    BitstreamWarning,
    KeypointDecoder,
    KeypointUnit,
    ParamsUnit,
    load_prior,
    read_units,
)
from bitstream.synthetic import example_stream
from bitstream.units import parse_packet, parse_unit
from iwcodec.errors import IWCodecError

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bitstream_fuzz.py"
MODEL = load_prior()
STREAM, _ = example_stream(np.random.default_rng(3), frames=20, frames_per_unit=5, resync_period=10)


def consume(data: bytes) -> None:
    """Read and decode everything; only project errors may escape."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any other warning (numpy overflow...) is a bug
        warnings.simplefilter("ignore", BitstreamWarning)
        try:
            decoder = None
            for unit in read_units(data):
                if isinstance(unit, ParamsUnit) and unit.entropy_id == MODEL.id:
                    decoder = KeypointDecoder(unit, MODEL)
                elif isinstance(unit, KeypointUnit) and decoder is not None:
                    decoder.decode(unit)
        except IWCodecError:
            pass
        for parse in (parse_packet, parse_unit):
            try:
                parse(data)
            except IWCodecError:
                pass


edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.integers(0, len(STREAM) - 1),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits)
def test_mutated_streams_raise_only_project_errors(ops):
    data = bytearray(STREAM)
    for op, at, blob in ops:
        at = min(at, max(len(data) - 1, 0))
        if op == "flip" and data:
            data[at] ^= blob[0] or 1
        elif op == "set":
            data[at : at + len(blob)] = blob
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = blob
        else:
            del data[at : at + len(blob)]
    consume(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_project_errors(data):
    consume(data)
    consume(STREAM[:40] + data)


def test_fuzz_tool_smoke():
    spec = importlib.util.spec_from_file_location("bitstream_fuzz", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    corpus = tool.build_corpus()
    spans = [tool._unit_spans(c) for c in corpus]
    depth: collections.Counter = collections.Counter()
    outcomes = collections.Counter(
        tool.run_one(tool.mutate(corpus, spans, 7, i), MODEL, depth) for i in range(330)
    )
    assert outcomes["ok"] > 50 and sum(outcomes.values()) == 330
    assert depth["frames_decoded"] > 0 and depth["frames_lost"] > 0
    assert tool.mutate(corpus, spans, 7, 12) == tool.mutate(corpus, spans, 7, 12)


@pytest.mark.slow
def test_fuzz_tool_end_to_end(tmp_path):
    """The tool itself, with its worker processes and watchdog."""
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--inputs", "400", "--workers", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TOOL.parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["inputs"] == 400 and summary["crashes"] == 0 and summary["hangs"] == 0
    assert summary["peak_rss_mb"] > 0
