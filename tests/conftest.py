"""Settings for the whole test session.

The suite runs on ``pytest-xdist`` workers (``-n auto`` in ``pyproject.toml``: one worker per
CPU the process may run on, at most 8; ``-n 0`` runs it in one process). Each worker holds
torch to one intra-op thread, and the processes tests start inherit that through
``OMP_NUM_THREADS``: workers of two threads each on two cores fight over them.

Tests marked ``realtime`` run a call against the clock (frames per second, freezes, recovery
times). On a worker such a test waits until no other test runs and holds the machine while it
runs; the other tests share it. Calls that competed with other tests for two cores showed too
few frames in their windows (3 of 4 suite runs with two calls at once, 1 of 4 with one call
beside other tests).

Measured on the 2-core dev machine (533 tests): one process 110-117 s; two workers of two
torch threads 100 s; two of one thread 79-85 s, but with the calls failing as above; two of
one thread with the calls alone 90-99 s (4 runs), and 92.6 s in a clean-clone ``.ci/run``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")

if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        yield  # closing the file releases the lock


@contextlib.contextmanager
def machine_share(folder: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock across the workers, by ``flock`` on two files in ``folder``: a
    test that runs ``alone`` holds ``machine`` exclusively, the others share it. Every test
    passes ``turnstile`` first, and a test waiting to run alone keeps it, so the tests that
    come after wait behind it instead of keeping ``machine`` shared for ever."""
    turnstile, machine = folder / "turnstile.lock", folder / "machine.lock"
    if alone:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(machine, fcntl.LOCK_EX):
            yield
        return
    with _flock(turnstile, fcntl.LOCK_EX):
        pass
    with _flock(machine, fcntl.LOCK_SH):
        yield


@pytest.fixture(autouse=True)
def _realtime_runs_alone(request, tmp_path_factory) -> Iterator[None]:
    if not WORKER:
        yield
        return
    # every worker's base temp folder (popen-gwN) lies in the session's one
    folder = tmp_path_factory.getbasetemp().parent
    with machine_share(folder, alone=request.node.get_closest_marker("realtime") is not None):
        yield
