"""Third-party native log lines, silenced at their source.

MediaPipe's C++ graphs (glog/absl) and TFLite print lines such as ``INFO: Created TensorFlow
Lite XNNPACK delegate for CPU`` and ``W0000 ... inference_feedback_manager.cc:114] ...`` straight
to file descriptor 2 while a graph is built and first run; no environment variable reaches them
before absl is initialised (GLOG_minloglevel and TF_CPP_MIN_LOG_LEVEL were tried). So the few
places that build a MediaPipe graph do it, and run it once, inside :func:`quiet_native_stderr`,
which points descriptor 2 at /dev/null for that short window. Python's own errors and warnings
are not affected outside the window; inside it, anything any thread writes to stderr is lost,
so the window holds graph construction and a warm-up call only (and, in
``sender.face_mesh.FaceMesh``, each run until the first face is found: the mesh logs a line
the first time it finds one, which a warm-up on a blank image cannot reach).

``iwcodec --verbose`` (or ``IWCODEC_VERBOSE=1``) lets the lines through.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np

_verbose = os.environ.get("IWCODEC_VERBOSE", "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Let third-party native log lines through (True) or silence them (False)."""
    global _verbose
    _verbose = on


def verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Descriptor 2 goes to /dev/null inside the block (unless verbose)."""
    if _verbose:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to redirect
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def warm_up(*graphs) -> None:
    """Run each MediaPipe graph (anything with ``process(rgb)``) once on a black image, so
    that the lines it prints on its first run fall inside the caller's quiet window. No face
    is found there, so a tracking graph starts the real frames with no state."""
    black = np.zeros((64, 64, 3), np.uint8)
    for graph in graphs:
        graph.process(black)
