"""``iwcodec cache pack|unpack`` (sender/cache_transport.py): pack a crop cache small, unpack
it with PyAV or with OpenCV only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sender.cache_transport as ct
from iwcodec.cli import main


def smooth_frames(t: int, s: int, seed: int = 0) -> np.ndarray:
    """Photo-like content (smooth gradients plus a moving disc): what H.264 is built for."""
    yy, xx = np.mgrid[0:s, 0:s] / s
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, 3)
    out = np.empty((t, s, s, 3), np.uint8)
    for i in range(t):
        disc = ((xx - 0.3 - 0.02 * i) ** 2 + (yy - 0.5) ** 2) < 0.04
        img = base + 50 * np.stack([xx, yy, xx * yy], -1) + 60 * disc[..., None]
        out[i] = np.clip(img, 0, 255)
    return out


def make_cache(d: Path, clips: dict[str, int], s: int = 64) -> Path:
    d.mkdir(parents=True)
    index = {"version": 1, "clips": {}, "failed": {}}
    rng = np.random.default_rng(1)
    for k, (name, t) in enumerate(clips.items()):
        np.save(d / f"{name}.npy", smooth_frames(t, s, seed=k))
        marks = np.cumsum(rng.normal(0, 0.003, (t, 478, 2)), axis=0) + rng.uniform(
            -0.8, 0.8, (478, 2)
        )
        marks = marks.astype(np.float16)
        marks[t // 2] = np.nan
        np.save(d / f"{name}.landmarks.npy", marks)
        np.savez(
            d / f"{name}.track.npz", pts=np.arange(t) / 25.0, boxes=np.ones((t, 3), np.float32)
        )
        index["clips"][name] = {
            "name": name,
            "frames": t,
            "size": s,
            "fps": "25/1",
            "fps_float": 25.0,
        }
    (d / "index.json").write_text(json.dumps(index))
    return d


def test_landmark_codec_round_trip_keeps_missing_rows() -> None:
    rng = np.random.default_rng(0)
    marks = rng.uniform(-1.2, 1.2, (7, 478, 2)).astype(np.float16)
    marks[[0, 4]] = np.nan
    back = ct.decode_landmarks(ct.encode_landmarks(marks), 7)
    assert back.dtype == np.float16 and back.shape == marks.shape
    assert np.isnan(back[[0, 4]]).all() and np.isfinite(back[[1, 2, 3, 5, 6]]).all()
    ok = np.isfinite(marks)
    assert (
        np.abs(back[ok].astype(np.float32) - marks[ok].astype(np.float32)).max()
        <= 0.5 / 1024 + 1e-3
    )
    with pytest.raises(ct.TransportError):
        ct.decode_landmarks(ct.encode_landmarks(marks), 8)
    with pytest.raises(ct.TransportError):
        ct.decode_landmarks(b"\x00garbage", 7)


def test_parts_cover_every_clip_once_and_balance() -> None:
    clips = {f"c{i}": {"frames": f} for i, f in enumerate([500, 400, 300, 200, 100, 100, 50])}
    parts = ct.split_parts(clips, 2)
    assert sorted(sum(parts, [])) == sorted(clips)
    loads = [sum(clips[n]["frames"] for n in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= 100
    with pytest.raises(ct.TransportError):
        ct.parse_part("3/2")


@pytest.mark.parametrize("hide_av", [False, True], ids=["av", "cv2-only"])
def test_pack_unpack_round_trip(tmp_path: Path, monkeypatch, capsys, hide_av: bool) -> None:
    if hide_av:
        pytest.importorskip("cv2")
    src = make_cache(tmp_path / "cache", {"a": 12, "b": 9, "c": 5})
    for i in (1, 2):
        argv = ["cache", "pack", str(src), str(tmp_path / f"p{i}"), "--crf", "12"]
        assert main([*argv, "--part", f"{i}/2"]) == 0
    packed = capsys.readouterr().out
    assert "packed 1 clips, 12 frames" in packed and "packed 2 clips, 14 frames" in packed
    if hide_av:
        monkeypatch.setitem(sys.modules, "av", None)  # as on the training machine
        assert ct.decoder() is ct._decode_cv2
    dst = tmp_path / "rebuilt"
    assert main(["cache", "unpack", str(tmp_path / "p1"), str(tmp_path / "p2"), str(dst)]) == 0
    index = json.loads((dst / "index.json").read_text())
    assert set(index["clips"]) == {"a", "b", "c"}
    for name in "abc":
        a, b = np.load(src / f"{name}.npy"), np.load(dst / f"{name}.npy")
        assert a.shape == b.shape
        assert ct.psnr(a, b) > 38
        assert index["clips"][name]["transport"]["crf"] == 12
        la, lb = np.load(src / f"{name}.landmarks.npy"), np.load(dst / f"{name}.landmarks.npy")
        np.testing.assert_array_equal(np.isnan(la), np.isnan(lb))
        assert np.nanmax(np.abs(la.astype(np.float32) - lb.astype(np.float32))) < 2e-3


def test_unpack_refuses_damaged_video(tmp_path: Path, capsys) -> None:
    src = make_cache(tmp_path / "cache", {"a": 6})
    ct.pack(src, tmp_path / "p", crf=20)
    (tmp_path / "p" / "a.mp4").write_bytes(b"\x00" * 100)
    assert main(["cache", "unpack", str(tmp_path / "p"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("iwcodec: error:")
    assert not (tmp_path / "out" / "a.npy").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["pack", "CACHE", "OUT", "--part", "3/2"], ("--part", "need 1 <= i <= n")),
        (["pack", "CACHE", "OUT", "--crf", "52"], ("--crf", "0..51")),
        (["pack", "OUT", "OUT2"], ("no readable index.json",)),
        (["unpack", "CACHE", "OUT"], ("not a packed crop cache",)),
    ],
)
def test_user_errors(tmp_path: Path, capsys, argv, words) -> None:
    make_cache(tmp_path / "CACHE", {"a": 3})
    (tmp_path / "OUT").mkdir()
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    assert main(["cache", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iwcodec: error:") and all(w in err for w in words), err


def test_unpack_runs_where_only_numpy_and_cv2_are(tmp_path: Path) -> None:
    """The training machine has neither PyAV nor MediaPipe: ``python -m iwcodec cache unpack``
    must not import them (nor torch, which it has, but does not need)."""
    src = make_cache(tmp_path / "cache", {"a": 4})
    ct.pack(src, tmp_path / "p", crf=20)
    code = (
        "import sys; sys.modules['av'] = None; sys.modules['mediapipe'] = None; "
        "sys.modules['torch'] = None; from iwcodec.cli import main; "
        f"sys.exit(main(['cache', 'unpack', {str(tmp_path / 'p')!r}, {str(tmp_path / 'out')!r}]))"
    )
    pytest.importorskip("cv2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "a.npy").is_file()
