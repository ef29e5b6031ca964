"""sender.face_mesh.FaceMesh: the one MediaPipe face-mesh wrapper (the crop cache's
landmarks and AKD), and its log lines kept off the terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from _media import sample_frames

from sender.face_mesh import N_LANDMARKS, FaceMesh


def test_points_of_a_face_and_none_without_one():
    face = sample_frames(1)[0]
    for tracking in (False, True):
        with FaceMesh(tracking=tracking) as mesh:
            assert mesh.points(np.zeros_like(face)) is None
            pts = mesh.points(face)
            assert pts.shape == (N_LANDMARKS, 2) and pts.dtype == np.float64
            assert 0 < pts.min() and pts.max() < 1  # the sample's face is well inside the frame
    with FaceMesh(tracking=False) as mesh:  # each frame on its own: the same answer twice
        assert np.array_equal(mesh.points(face), mesh.points(face))


_RUN = """
from _media import sample_frames
from sender.face_mesh import FaceMesh
with FaceMesh(tracking=False) as mesh:
    assert mesh.points(sample_frames(1)[0]) is not None
print("done")
"""


def _start_a_fresh_process(**env: str) -> subprocess.Popen:
    """MediaPipe logs some lines once per process: only a fresh one shows whether they print."""
    tests = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen(
        [sys.executable, "-c", _RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tests,
        env={**os.environ, "PYTHONPATH": tests, **env},
    )


def _finished(child: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_mediapipe_log_lines_stay_off_the_terminal_unless_verbose():
    """Building the graph, its first run and the first face it finds each log lines of their
    own (W0000 ... landmark_projection_calculator.cc among them); none reach stderr, unless
    IWCODEC_VERBOSE asks for them (which shows that there are lines to hide). The two
    processes run at the same time: each is fresh, and neither waits for the other."""
    children = [_start_a_fresh_process(IWCODEC_VERBOSE=v) for v in ("0", "1")]
    quiet, loud = [_finished(c) for c in children]
    assert quiet.returncode == 0 and quiet.stdout == "done\n", quiet.stderr
    assert quiet.stderr == ""
    assert loud.returncode == 0
    assert "landmark_projection_calculator" in loud.stderr
