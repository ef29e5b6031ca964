"""Property-based fuzzing of the parser (a modest number of examples; the 100k-input run is
``iwcodec fuzz``, bitstream/fuzz.py), and short runs of that fuzzer."""

from __future__ import annotations

import collections
import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitstream import (
    BitstreamWarning,
    KeypointDecoder,
    KeypointUnit,
    ParamsUnit,
    fuzz,
    load_prior,
    read_units,
)
from bitstream.synthetic import example_stream
from bitstream.units import parse_packet, parse_unit
from iwcodec.cli import main
from iwcodec.errors import IWCodecError

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


def test_fuzz_inputs_are_replayable_and_reach_the_decoder():
    corpus = fuzz.build_corpus()
    spans = [fuzz._unit_spans(c) for c in corpus]
    depth: collections.Counter = collections.Counter()
    outcomes = collections.Counter(
        fuzz.run_one(fuzz.mutate(corpus, spans, 7, i), MODEL, depth) for i in range(330)
    )
    assert outcomes["ok"] > 50 and sum(outcomes.values()) == 330
    assert depth["frames_decoded"] > 0 and depth["frames_lost"] > 0
    assert fuzz.mutate(corpus, spans, 7, 12) == fuzz.mutate(corpus, spans, 7, 12)


@pytest.mark.slow
def test_fuzz_command_end_to_end(tmp_path, capsys):
    """``iwcodec fuzz`` itself, with its worker processes and watchdog."""
    assert main(["fuzz", "--inputs", "400", "--workers", "1", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == 400 and summary["crashes"] == 0 and summary["hangs"] == 0
    assert summary["peak_rss_mb"] > 0 and sum(summary["per_mutator"].values()) == 400
    assert not list(tmp_path.iterdir())  # nothing bad, nothing saved


@pytest.mark.slow
def test_fuzz_command_counts_and_saves_memory_kills(tmp_path, capsys):
    """A memory bound no Python process can meet: every worker is killed on its first input,
    which is counted, saved for replay, and makes the exit status 1."""
    status = main(
        ["fuzz", "--inputs", "2", "--workers", "1", "--rss-mb", "1", "--out", str(tmp_path)]
    )
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert status == 1 and "2 bad inputs" in err
    assert summary["memory_kills"] == 2 and summary["bad_inputs"] == [[0, "memory"], [1, "memory"]]
    corpus = fuzz.build_corpus()
    spans = [fuzz._unit_spans(c) for c in corpus]
    assert (tmp_path / "input_1.bin").read_bytes() == fuzz.mutate(corpus, spans, 1, 1)
    assert (tmp_path / "input_1.txt").read_text() == "memory"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--inputs", "0"], ("--inputs", "whole number >= 1")),
        (["--workers", "x"], ("--workers", "1..256")),
        (["--timeout", "-1"], ("--timeout", "positive number of seconds")),
        (["--rss-mb", "0"], ("--rss-mb", "positive number of MiB")),
    ],
)
def test_fuzz_usage_errors(capsys, argv, words):
    assert main(["fuzz", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iwcodec: error: fuzz:") and all(w in err for w in words), err
