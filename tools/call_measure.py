"""Measure live calls: wire and payload bitrate, displayed frame rate, latency (docs/calls.md).

    /work/venv/bin/python tools/call_measure.py --out results/calls            # the whole grid
    /work/venv/bin/python tools/call_measure.py --out /tmp/c --quick           # a short smoke run

Two peers run in this one process on loopback, through a signaling server, each sending the
bundled sample (or ``--input``) in a loop, both directions at once, as a real call does. For
each setting (frames per keypoint message x SCTP acknowledgement policy) it records:

* wire kbps each direction, from the UDP datagrams the ICE sockets carry plus 28 bytes of
  IPv4/UDP header each (``receiver.rtc.WireCounter``), split into the data channels (DTLS/SCTP:
  keypoints, keyframes, control) and audio (SRTP), over the steady part of the call (after
  the first 3 s, which hold the keyframe);
* payload kbps: the bytes of the messages themselves (bitstream units, control messages);
* displayed frames per second and glass-to-glass latency: each frame's capture time at one
  peer (``time.time()`` when the source hands it over) against the time the other peer hands
  the rebuilt frame to its viewer, on the same clock (same process).

Two models: ``--model tiny20`` (the test model with K=20 keypoints, 64 px: renders in a few
ms, so latency and frame rate show the transport and pipeline, as a GPU would) and
``--model shipped`` (the trained 256 px weights: real keypoint statistics and keyframe size
for the bitrates; rendering off, since a CPU renders ~1 frame/s).

``run_pair`` is also what the call tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.config import tiny_config  # noqa: E402
from codec.model import ImplicitWarpingModel  # noqa: E402
from codec.weights import DEFAULT_WEIGHTS, load_model, save_weights  # noqa: E402
from receiver.call import CallHooks, CallOptions, CallReport, run_call  # noqa: E402
from receiver.rtc import SackPolicy  # noqa: E402
from receiver.signaling import SignalingServer  # noqa: E402
from sender.call import CallSender, SendOptions  # noqa: E402
from sender.live import FileSource, SilenceInput, ToneInput  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "iwcodec" / "samples" / "sample.mp4"


def tiny_model(path: Path, seed: int = 0, num_kp: int | None = None) -> ImplicitWarpingModel:
    """A random tiny model saved to ``path`` and loaded back (so it has a weights id)."""
    torch.manual_seed(seed)
    cfg = tiny_config()
    if num_kp is not None:
        cfg = dataclasses.replace(cfg, num_kp=num_kp)
    save_weights(ImplicitWarpingModel(cfg), path)
    return load_model(path)


def retimed_sample(path: Path, fps: Fraction, frames: int | None = None) -> Path:
    """The bundled sample's frames muxed at another nominal rate (e.g. 30 fps like a camera)."""
    with av.open(str(SAMPLE)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16", "preset": "ultrafast"}
        for i, frame in enumerate(src.decode(video=0)):
            if frames is not None and i == frames:
                break
            rgb = frame.to_ndarray(format="rgb24")
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


class ReplayedKeypoints(torch.nn.Module):
    """Stands in for a model on the sending side only: same weights id, config and device as
    ``model`` (so the far side accepts the stream), but ``detect`` hands out a recorded
    keypoint track in order (looping), e.g. the trained detector's keypoints on the same clip.
    Lets a CPU that cannot run the trained detector twice in real time still send keypoints
    with their real statistics; the receiver renders with ``model`` as usual."""

    def __init__(self, model: ImplicitWarpingModel, track: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.weights_id = model.weights_id
        self.track = torch.from_numpy(np.ascontiguousarray(track))  # (T, K, 3)
        self.position = 0

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = image.shape[0]
        idx = torch.arange(self.position, self.position + b) % len(self.track)
        self.position += b
        kp = self.track[idx]  # (B, K, 3)
        return kp[..., :2].clone(), kp[..., 2].clone()


def model_track(model: ImplicitWarpingModel, clip: Path) -> np.ndarray:
    """``model``'s keypoints on a clip's face crops, (T, K, 3)."""
    from sender.encoder import crop_input, detect_keypoints

    frames = crop_input(clip, model.cfg.image_size).frames
    return detect_keypoints(model, frames, progress=False)


def trained_track(clip: Path) -> np.ndarray:
    """The shipped model's keypoints on a clip's face crops, (T, K, 3)."""
    return model_track(load_model(DEFAULT_WEIGHTS), clip)


class SilentSender:
    """A sending half that introduces itself like ``sender`` but sends nothing: for one-way
    measurements, so that the machine's CPU serves one direction only."""

    def __init__(self, sender: CallSender) -> None:
        self._hello = sender.hello()
        self.audio_track = None
        self.stats = sender.stats

    def hello(self) -> dict:
        return self._hello

    async def run(self, link) -> None:
        await asyncio.Event().wait()

    def request_resync(self, loss_permille: int = 0) -> None:
        pass

    def request_keyframe(self, keyframe_id: int | None = None) -> None:
        pass


@dataclass
class Peer:
    """One side of an in-process call."""

    model: ImplicitWarpingModel
    input: Path = SAMPLE
    send: SendOptions = SendOptions()
    audio: str = "tone"  # tone, silence or off
    hooks: CallHooks | None = None
    view_port: int | None = None
    record: Path | None = None
    render: bool = True
    extra: dict = field(default_factory=dict)  # other CallOptions fields
    keypoints: np.ndarray | None = None  # replay this (T, K, 3) track instead of detecting
    silent: bool = False  # send nothing (one-way measurements)

    def sender(self, timeline: bool = False) -> CallSender | SilentSender:
        audio = {"tone": ToneInput, "silence": SilenceInput}.get(self.audio)
        send = dataclasses.replace(self.send, timeline=self.send.timeline or timeline)
        model = (
            self.model if self.keypoints is None else ReplayedKeypoints(self.model, self.keypoints)
        )
        sender = CallSender(model, FileSource(self.input), audio() if audio else None, send)
        return SilentSender(sender) if self.silent else sender


async def run_pair(
    a: Peer,
    b: Peer,
    seconds: float,
    sack: SackPolicy = SackPolicy.BUNDLED,
    timeline: bool = False,
    room: str = "room",
    token: str = "loopback-call-token",
    server: SignalingServer | None = None,
    senders: tuple | None = None,
) -> list[CallReport | BaseException]:
    """Run a call between ``a`` and ``b`` for ``seconds``; returns both reports (or the
    exception each side ended with)."""
    own = server is None
    server = server or SignalingServer(token)
    url = await server.start() if own else server.url
    try:
        calls = []
        for i, peer in enumerate((a, b)):
            options = CallOptions(
                room=room,
                signal_url=url,
                token=token,
                view_port=peer.view_port,
                record=peer.record,
                duration=seconds,
                wait_timeout=30.0,
                sack_policy=sack,
                timeline=timeline,
                render=peer.render,
                **peer.extra,
            )
            sender = senders[i] if senders is not None else peer.sender(timeline)
            calls.append(run_call(options, peer.model, sender, peer.hooks))
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        if own:
            await server.stop()


def latency_stats(
    sender_report: CallReport, receiver_report: CallReport, skip_s: float = 3.0
) -> dict:
    """Glass-to-glass latency of the frames one peer captured and the other showed."""
    capture = sender_report.timeline.get("capture", {})
    shown = receiver_report.timeline.get("shown", {})
    arrival = receiver_report.timeline.get("arrival", {})
    keys = [k for k in shown if k in capture]
    if not keys:
        return {}
    t0 = min(capture[k] for k in keys)
    keys = [k for k in keys if capture[k] >= t0 + skip_s]
    total = np.array([shown[k] - capture[k] for k in keys]) * 1000
    net = np.array([arrival[k] - capture[k] for k in keys if k in arrival]) * 1000
    ready = receiver_report.timeline.get("ready", {})
    render = np.array([ready[k] - arrival[k] for k in keys if k in ready and k in arrival]) * 1000
    wait = np.array([shown[k] - ready[k] for k in keys if k in ready]) * 1000
    if not len(total):
        return {}
    return {
        "frames": len(total),
        "median_ms": float(np.median(total)),
        "p90_ms": float(np.percentile(total, 90)),
        "p99_ms": float(np.percentile(total, 99)),
        "capture_to_arrival_median_ms": float(np.median(net)) if len(net) else None,
        "arrival_to_ready_median_ms": float(np.median(render)) if len(render) else None,
        "ready_to_shown_median_ms": float(np.median(wait)) if len(wait) else None,
    }


def summarize(reports: list[CallReport], timeline: bool) -> dict:
    out = {}
    for name, mine, theirs in (("a", reports[0], reports[1]), ("b", reports[1], reports[0])):
        steady = mine.summary.get("steady", {})
        side = {
            k: steady.get(k)
            for k in (
                "wire_kbps_sent_data",
                "wire_kbps_received_data",
                "wire_kbps_sent_audio",
                "wire_kbps_sent",
                "wire_kbps_received",
                "wire_packets_per_s_sent",
                "payload_kbps_sent",
                "payload_kbps_sent_keypoints",
                "payload_kbps_received",
                "fps_sent",
                "fps_shown",
            )
        }
        totals = mine.summary.get("totals", {})
        side["frames_lost"] = totals.get("rx_frames_lost")
        side["frames_skipped"] = totals.get("rx_frames_skipped")
        side["keyframes_sent"] = totals.get("keyframes_sent")
        side["rtt_ms"] = mine.summary.get("rtt_ms")
        side["render_ms"] = mine.summary.get("render_ms")
        side["sack"] = mine.summary.get("sack")
        side["frames_per_message"] = mine.summary.get("frames_per_message")
        if timeline:
            side["latency_shown_here"] = latency_stats(theirs, mine)
        out[name] = side
    return out


def offline_payload(
    model: ImplicitWarpingModel, clips: list[Path], frames_per_message: list[int], fps: int = 30
) -> dict:
    """Keypoint message sizes for the model's own keypoints on real clips, coded exactly as a
    call codes them (``CallSender``'s encoder settings: resync every 60 frames, N frames per
    unit), without real time: the CPU's speed does not change a byte. Per N: mean bytes per
    message and the payload kbps at ``fps``."""
    from bitstream import KeypointEncoder, KeypointFrame
    from sender.encoder import EncodeOptions, entropy_model, stream_params

    options = SendOptions()
    table = entropy_model(EncodeOptions())
    params = stream_params(model, Fraction(fps), EncodeOptions(), table)
    tracks = [model_track(model, clip) for clip in clips]  # (T, K, 3) each
    out = {"clips": [c.name for c in clips], "frames": int(sum(len(t) for t in tracks)), "by_n": {}}
    for n in frames_per_message:
        sizes = []
        for kp in tracks:
            encoder = KeypointEncoder(params, table, resync_period=options.coding.resync_period)
            for start in range(0, len(kp) - n + 1, n):
                frames = [
                    KeypointFrame(i, params.nominal_pts(i), kp[i], (0,))
                    for i in range(start, start + n)
                ]
                sizes.append(len(encoder.encode(frames).to_bytes()))
        mean = float(np.mean(sizes))
        out["by_n"][str(n)] = {
            "messages": len(sizes),
            "bytes_per_message": mean,
            "bytes_per_frame": mean / n,
            "payload_kbps": mean * fps / n * 8 / 1000,
        }
    return out


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20.0, help="call length per setting")
    parser.add_argument("--fps", default="30", help="retime the sample to this rate (or 'native')")
    parser.add_argument("--model", choices=("tiny20", "shipped"), default="tiny20")
    parser.add_argument(
        "--keypoints",
        choices=("model", "trained"),
        default="trained",
        help="trained: send the shipped detector's keypoints of the clip, replayed (default)",
    )
    parser.add_argument("--frames", default="1,2,3,4", help="frames per message to try")
    parser.add_argument("--sack", default="immediate,delayed,bundled")
    parser.add_argument("--audio", default="tone", choices=("tone", "silence", "off"))
    parser.add_argument("--audio-frame-ms", type=int, default=60)
    parser.add_argument("--name", default=None, help="output file name (default from settings)")
    parser.add_argument(
        "--mode",
        choices=("both", "wire", "latency"),
        default="both",
        help="wire: both directions, no rendering; latency: one direction, rendering; "
        "both: both directions with rendering",
    )
    parser.add_argument("--quick", action="store_true", help="one short run (smoke test)")
    parser.add_argument(
        "--offline-payload",
        nargs="*",
        type=Path,
        default=None,
        metavar="CLIP",
        help="instead of calls: message sizes of the model's keypoints on these clips",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    frames_list = [int(x) for x in args.frames.split(",")]
    sacks = [SackPolicy(x) for x in args.sack.split(",")]
    if args.quick:
        frames_list, sacks, args.seconds = [3], [SackPolicy.BUNDLED], 6.0
    if args.offline_payload is not None:
        model = load_model(DEFAULT_WEIGHTS) if args.model == "shipped" else None
        with tempfile.TemporaryDirectory() as tmp:
            if model is None:
                model = tiny_model(Path(tmp) / "tiny20.safetensors", num_kp=20)
            result = offline_payload(model, args.offline_payload or [SAMPLE], frames_list)
        result.update(model=args.model, machine=machine())
        name = args.name or f"payload_{args.model}.json"
        (args.out / name).write_text(json.dumps(result, indent=1))
        print(json.dumps(result["by_n"], indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model == "tiny20":
            model = tiny_model(tmp / "tiny20.safetensors", num_kp=20)
        else:
            model = load_model(DEFAULT_WEIGHTS)
        source = (
            SAMPLE if args.fps == "native" else retimed_sample(tmp / "in.mp4", Fraction(args.fps))
        )
        track = trained_track(source) if args.keypoints == "trained" else None
        runs = []
        for n in frames_list:
            for sack in sacks:
                send = SendOptions(
                    frames_per_message=n, timeline=True, audio_frame_ms=args.audio_frame_ms
                )
                render = args.model == "tiny20" and args.mode != "wire"
                a = Peer(model, source, send, args.audio, render=render, keypoints=track)
                b = Peer(
                    model,
                    source,
                    send,
                    args.audio,
                    render=render,
                    keypoints=track,
                    silent=args.mode == "latency",
                )
                start = time.time()
                reports = asyncio.run(run_pair(a, b, args.seconds, sack, timeline=True))
                bad = [r for r in reports if isinstance(r, BaseException)]
                if bad:
                    raise bad[0]
                run = {
                    "frames_per_message": n,
                    "sack": sack.value,
                    "seconds": args.seconds,
                    "wall_s": time.time() - start,
                    **summarize(reports, True),
                }
                runs.append(run)
                a_ = run["a"]
                print(
                    f"N={n} sack={sack.value:9s} wire data {a_['wire_kbps_sent_data']:.2f}/"
                    f"{a_['wire_kbps_received_data']:.2f} kbps, payload {a_['payload_kbps_sent']:.2f}, "
                    f"shown {a_['fps_shown']:.1f} fps, latency "
                    f"{a_.get('latency_shown_here', {}).get('median_ms', float('nan')):.0f} ms",
                    flush=True,
                )
    name = args.name or f"calls_{args.mode}_{args.fps}fps{'_quick' if args.quick else ''}.json"
    result = {
        "what": "two peers in one process on loopback; steady = after the first 3 s",
        "mode": {
            "both": "both peers send and render",
            "wire": "both peers send; nothing is rendered (the CPU serves the transport)",
            "latency": "peer a sends, peer b renders and shows (one direction)",
        }[args.mode],
        "model": args.model,
        "keypoints": "the shipped detector's, replayed"
        if args.keypoints == "trained"
        else "the model's own",
        "niceness": os.nice(0),
        "input": str(
            source.name if args.fps == "native" else f"sample.mp4 retimed to {args.fps} fps"
        ),
        "audio": args.audio,
        "audio_frame_ms": args.audio_frame_ms,
        "machine": machine(),
        "runs": runs,
    }
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
