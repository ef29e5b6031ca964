"""Fresh child processes for the kernel benchmarks (one process's number is not a result).

On a GPU timed children run one after another: each times kernels on the same device, and two
at once would time each other. Under triton's interpreter (``--smoke`` on a CPU) a child's
timings mean nothing and children share neither a device nor a compile cache (the interpreter
compiles nothing), so the benchmarks run them at the same time there: the same children,
arguments and outputs, and a smoke run waits for about one child's start-up (importing torch,
~1 s) instead of one per child.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor


def run_module(
    module: str,
    argvs: Sequence[Sequence[str]],
    together: bool,
    env: dict[str, str] | None = None,
    done: Callable[[int], None] | None = None,
) -> list[subprocess.CompletedProcess]:
    """``python -m module *argv`` for each argv, output captured. ``together``: all at once;
    else one after another. Returns the results in the order of ``argvs`` up to the first that
    failed (one after another, the rest never start); ``done(i)`` is called, in that order,
    for each child that exited 0."""

    def one(argv: Sequence[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", module, *argv]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)

    def results(
        finished: Iterable[subprocess.CompletedProcess],
    ) -> list[subprocess.CompletedProcess]:
        runs = []
        for i, run in enumerate(finished):
            runs.append(run)
            if run.returncode != 0:
                break
            if done is not None:
                done(i)
        return runs

    if not together:
        return results(one(argv) for argv in argvs)  # lazy: a failure stops the rest
    with ThreadPoolExecutor(max(1, len(argvs))) as pool:
        return results(pool.map(one, argvs))
