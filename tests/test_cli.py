"""iwcodec/cli.py: the commands, their printed numbers, and how every user error reads.

Each bad input must end as ``iwcodec: error: <message>`` on stderr with exit status 2, never a
traceback. A tiny random model (64 px) stands in for the shipped weights.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _media import sample_frames, tiny_weights, write_clip

from bitstream import scan_stream
from iwcodec.cli import main


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def weights(work: Path) -> Path:
    return tiny_weights(work / "tiny.safetensors", seed=0)


@pytest.fixture(scope="module")
def clip(work: Path) -> Path:
    return write_clip(work / "face.mp4", sample_frames(16), fps=25)


@pytest.fixture(scope="module")
def encoded(work: Path, clip: Path, weights: Path) -> Path:
    out = work / "face.iwc"
    assert main(["encode", str(clip), "-o", str(out), "--weights", str(weights), "--quiet"]) == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(status: int, err: str, *words: str) -> None:
    assert status == 2
    assert err.startswith("iwcodec: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


def test_encode_prints_the_rate_split(capsys, work, clip, weights) -> None:
    out = work / "again.iwc"
    status, stdout, _ = run(capsys, "encode", clip, "-o", out, "--weights", weights, "--quiet")
    assert status == 0
    size = out.stat().st_size
    assert "16 frames" in stdout and f"in {size} bytes" in stdout
    assert re.search(r"keyframe [\d.]+ \(\d+ B\) \+ keypoints [\d.]+", stdout)


def test_encode_keyframe_policies(capsys, work, clip, weights) -> None:
    """Every --keyframes choice writes a stream (fixed at 0.2 s: a keyframe every 5 frames of
    the 25 fps clip), and a bad parameter is a user error before any work."""
    counts = {}
    for policy, extra in [
        ("one", []),
        ("quality", []),
        ("budget", ["--keyframe-kbps", "50"]),
        ("fixed", ["--keyframe-interval", "0.2"]),
    ]:
        out = work / f"kf-{policy}.iwc"
        status, _, err = run(
            capsys, "encode", clip, "-o", out, "--weights", weights, "--quiet",
            "--keyframes", policy, *extra,
        )  # fmt: skip
        assert status == 0, err
        counts[policy] = sum(1 for r in scan_stream(out) if type(r.unit).__name__ == "KeyframeUnit")
    assert counts["one"] == 1 and counts["fixed"] == 4  # frames 0, 5, 10, 15
    for bad in (["--keyframe-kbps", "0", "--keyframes", "budget"], ["--keyframe-set", "17"]):
        status, _, err = run(
            capsys, "encode", clip, "-o", work / "bad.iwc", "--weights", weights, *bad
        )
        assert_user_error(status, err)
    assert not (work / "bad.iwc").exists()


def test_decode_writes_the_video(capsys, work, encoded, weights) -> None:
    out = work / "decoded.mp4"
    status, stdout, _ = run(capsys, "decode", encoded, "-o", out, "--weights", weights, "--quiet")
    assert status == 0 and "16 frames" in stdout
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert sum(1 for _ in c.decode(s)) == 16 and s.average_rate == Fraction(25)


def test_info_numbers_add_up_to_the_file_size(capsys, encoded) -> None:
    status, stdout, _ = run(capsys, "info", encoded)
    assert status == 0
    size = encoded.stat().st_size
    rows = {
        m[1]: (int(m[2]), int(m[3]), float(m[4]))
        for m in re.finditer(r"^(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)$", stdout, re.M)
    }
    assert set(rows) == {"params", "keyframe", "keypoints", "end", "total"}
    parts = [rows[k] for k in ("params", "keyframe", "keypoints", "end")]
    assert sum(p[1] for p in parts) == rows["total"][1] == size
    assert sum(p[0] for p in parts) == rows["total"][0] == len(list(scan_stream(encoded)))
    assert rows["total"][2] == pytest.approx(size * 8 / (16 / 25) / 1000, abs=0.01)
    assert sum(p[2] for p in parts) == pytest.approx(rows["total"][2], abs=0.03)
    assert "frames:      16 (0.64 s)   complete: yes" in stdout


def test_other_weights_are_refused(capsys, work, encoded, weights) -> None:
    other = tiny_weights(work / "other.safetensors", seed=1)
    status, _, err = run(capsys, "decode", encoded, "-o", work / "x.mp4", "--weights", other)
    mine = next(iter(scan_stream(encoded))).unit.weights_id.hex()
    assert_user_error(status, err, mine, "model weights")
    assert not (work / "x.mp4").exists()


def test_missing_shipped_weights_say_so(capsys, monkeypatch, work, encoded) -> None:
    monkeypatch.setattr("codec.weights.DEFAULT_WEIGHTS", work / "absent.safetensors")
    status, _, err = run(capsys, "decode", encoded, "-o", work / "y.mp4")
    assert_user_error(status, err, "weights are missing", "--weights")


def _text(path: Path) -> Path:
    path.write_text("hello, this is not a video\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _no_face(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [np.full((96, 128, 3), 90, np.uint8) + rng.integers(0, 20, (96, 128, 3), np.uint8)]
    return write_clip(path, frames * 8)


@pytest.mark.parametrize(
    ("make", "name", "words"),
    [
        (_text, "notes.mp4", ("not a video",)),
        (_empty, "empty.mp4", ("empty",)),
        (_no_face, "wall.mp4", ("no face",)),
        (lambda p: p, "missing.mp4", ("no such file",)),
    ],
)
def test_bad_video_inputs_are_user_errors(capsys, work, weights, make, name, words) -> None:
    src = make(work / name)
    out = work / f"{name}.iwc"
    status, _, err = run(capsys, "encode", src, "-o", out, "--weights", weights, "--quiet")
    assert_user_error(status, err, name, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty file"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "not an iwcodec stream"),
    ],
)
def test_bad_streams_are_user_errors(capsys, work, weights, data, words) -> None:
    src = work / "bad.iwc"
    src.write_bytes(data)
    for argv in (["info", src], ["decode", src, "-o", work / "bad.mp4", "--weights", weights]):
        status, _, err = run(capsys, *argv)
        assert_user_error(status, err, words)
    assert not (work / "bad.mp4").exists()


def test_truncated_stream(capsys, work, encoded, weights) -> None:
    data = encoded.read_bytes()
    cut = work / "cut.iwc"
    cut.write_bytes(data[: len(data) - 5])
    out = work / "cut.mkv"
    status, _, err = run(capsys, "decode", cut, "-o", out, "--weights", weights, "--quiet")
    assert_user_error(status, err, "truncated", "no output was written", "--partial")
    assert not out.exists()
    status, _, err = run(
        capsys, "decode", cut, "-o", out, "--weights", weights, "--quiet", "--partial"
    )
    assert_user_error(status, err, "truncated", "INCOMPLETE")
    assert out.exists()
    status, stdout, err = run(capsys, "info", cut)
    assert_user_error(status, err, "truncated")
    assert "complete: NO" in stdout and "cut tail" in stdout


def test_damaged_middle_unit_is_a_warning(capsys, work, encoded, weights) -> None:
    data = bytearray(encoded.read_bytes())
    records = list(scan_stream(encoded))
    assert len(records) == 4  # params, keyframe, one keypoint unit (16 < 30 frames), end
    key = records[2]
    data[key.offset + key.size // 2] ^= 0x10
    bad = work / "hurt.iwc"
    bad.write_bytes(bytes(data))
    out = work / "hurt.mp4"
    status, stdout, err = run(capsys, "decode", bad, "-o", out, "--weights", weights, "--quiet")
    assert status == 0
    assert "iwcodec: warning: damaged unit" in err and "Traceback" not in err
    assert "16 frames" in stdout and "16 lost frames" in stdout


def test_keyframe_options(capsys, work, clip, weights) -> None:
    out = work / "webp.iwc"
    argv = ["encode", clip, "-o", out, "--weights", weights, "--quiet"]
    status, _, err = run(capsys, *argv, "--keyframe-codec", "webp", "--keyframe-quality", "90")
    assert status == 0, err
    assert [r.unit.codec.name for r in scan_stream(out) if r.unit.TYPE == 2] == ["WEBP"]
    status, _, err = run(capsys, *argv, "--keyframe-codec", "gif")
    assert_user_error(status, err, "unknown keyframe codec")
    status, _, err = run(capsys, *argv, "--keyframe-quality", "0")
    assert_user_error(status, err, "1..100")
    status, _, err = run(
        capsys, "encode", clip, "-o", work / "nowhere" / "x.iwc", "--weights", weights
    )
    assert_user_error(status, err, "does not exist")


def test_unsupported_output_extension(capsys, work, encoded, weights) -> None:
    status, _, err = run(capsys, "decode", encoded, "-o", work / "z.avi", "--weights", weights)
    assert_user_error(status, err, ".avi", ".mkv")


def test_usage_errors_exit_2(capsys) -> None:
    assert main([]) == 2
    assert main(["encode"]) == 2
    assert main(["--version"]) == 0
    assert "iwcodec" in capsys.readouterr().out


def test_train_is_delegated(capsys) -> None:
    assert main(["train", "--help"]) == 0
    assert "Train the implicit-warping model" in capsys.readouterr().out


def test_unavailable_device(capsys, work, encoded, weights) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    status, _, err = run(
        capsys, "decode", encoded, "-o", work / "g.mp4", "--weights", weights, "--device", "cuda"
    )
    assert_user_error(status, err, "no CUDA GPU")


@pytest.mark.slow
def test_demo_writes_its_outputs(capsys, work, weights) -> None:
    out_dir = work / "demo"
    status, stdout, _ = run(
        capsys, "demo", "--weights", weights, "--out-dir", out_dir, "--max-frames", "20", "--quiet"
    )
    assert status == 0
    report = json.loads((out_dir / "demo.json").read_text())
    assert report["frames"] == report["decoded_frames"] == 20
    assert report["fps"] == [30, 1]  # the bundled demo clip, a validation clip
    stream = out_dir / "demo.iwc"
    assert report["bytes"]["total"] == stream.stat().st_size
    for key in ("reconstruction", "side_by_side"):
        assert Path(report["outputs"][key]).is_file()
    with av.open(str(out_dir / "side_by_side.mp4")) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (128, 64)
        assert sum(1 for _ in c.decode(s)) == 20
    assert np.isfinite(report["metrics"]["psnr"]) and 0 <= report["metrics"]["lpips"]
    assert "PSNR" in stdout and "kbps" in stdout and str(out_dir) in stdout


def test_sigterm_leaves_no_part_file_and_no_output(
    capsys, monkeypatch, work, clip, weights
) -> None:
    """SIGTERM while the stream is being put in place (the moment a ``.part`` file exists)
    unwinds like Ctrl-C: exit 128 + 15, the ``.part`` removed, no output, the input intact."""
    import os
    import signal

    out = work / "term.iwc"
    before = clip.read_bytes()
    real_replace = os.replace

    def replace_then_term(src, dst, *a, **k):
        assert Path(src).name == ".term.iwc.part" and Path(src).exists()
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises before the rename
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace_then_term)
    status = main(["encode", str(clip), "-o", str(out), "--weights", str(weights), "--quiet"])
    assert status == 128 + signal.SIGTERM
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert not out.exists() and not list(work.glob(".term*"))
    assert clip.read_bytes() == before
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored


def test_no_third_party_log_lines_unless_verbose(work, clip, weights) -> None:
    """MediaPipe/TFLite write to descriptor 2 from C++ (not capturable in-process): run the
    command in a child and read its stderr. Silent by default; --verbose lets them through.
    The two children (each a fresh process, each with its own output) run at the same time."""
    import subprocess
    import sys

    def start(*flags: str) -> subprocess.Popen:
        out = work / f"quiet{''.join(flags)}.iwc"
        out.unlink(missing_ok=True)
        argv = [*flags, "encode", str(clip), "-o", str(out), "--weights", str(weights)]
        code = f"from iwcodec.cli import main; raise SystemExit(main({argv!r}))"
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stderr_of(child: subprocess.Popen) -> str:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        return err

    quiet, verbose = [stderr_of(c) for c in (start(), start("--verbose"))]
    noise = re.compile(r"^(W0000|I0000|INFO: Created TensorFlow|WARNING: All log messages)", re.M)
    assert not noise.search(quiet), quiet
    assert noise.search(verbose)


def test_outputs_that_would_destroy_a_file_are_refused(capsys, work, clip, encoded, weights):
    """Issue 17 rows 3 and 5: the input as output (also through a link), a stream under a
    video's name, a folder as output: one error line, nothing written, the input intact."""
    before = clip.read_bytes()
    link = work / "link.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to(clip)
    for out in (clip, link):
        status, _, err = run(capsys, "encode", clip, "-o", out, "--weights", weights)
        assert_user_error(status, err, "is the input file", "--force")
    assert clip.read_bytes() == before
    status, _, err = run(capsys, "encode", clip, "-o", work / "x.mp4", "--weights", weights)
    assert_user_error(status, err, "another kind of file", "x.iwc")
    assert not (work / "x.mp4").exists()
    forced = ["encode", clip, "-o", work / "x.mp4", "--weights", weights, "--force", "--quiet"]
    assert run(capsys, *forced)[0] == 0  # the user insists: a stream named .mp4
    folder = work / "o.mp4"
    folder.mkdir(exist_ok=True)
    status, _, err = run(capsys, "decode", encoded, "-o", folder, "--weights", weights)
    assert_user_error(status, err, "is a folder")
    assert not list(work.glob(".*.part")) and not any(folder.iterdir())


def test_weights_that_give_nan_are_a_clear_error(capsys, work, clip, encoded, weights):
    """Issue 17 row 6: a detector that outputs NaN (a diverged run) is named as such at
    encode and decode, not a ValueError from the quantizer."""
    from safetensors.torch import load_file, save_file

    from codec.weights import read_metadata

    state = load_file(weights)
    name = next(k for k in state if k.startswith("kp_detector") and k.endswith("weight"))
    state[name] = torch.full_like(state[name], float("nan"))
    bad = work / "nan.safetensors"
    save_file(state, bad, metadata=read_metadata(weights))
    status, _, err = run(capsys, "encode", clip, "-o", work / "nan.iwc", "--weights", bad)
    assert_user_error(status, err, "NaN or infinite", "weights")
    assert not (work / "nan.iwc").exists()
