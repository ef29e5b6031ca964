"""Measure live calls: wire and payload bitrate, displayed frame rate, latency (docs/calls.md).

    python -m iwcodec.call.measure --out results/calls            # the whole grid
    python -m iwcodec.call.measure --out /tmp/c --quick           # a short smoke run

Two peers run in this one process on loopback (``iwcodec.call.loopback``), through a signaling
server, each sending the bundled sample (or ``--input``) in a loop, both directions at once,
as a real call does. For each setting (frames per keypoint message x SCTP acknowledgement
policy) it records:

* wire kbps each direction, from the UDP datagrams the ICE sockets carry plus 28 bytes of
  IPv4/UDP header each (``iwcodec.call.rtc.WireCounter``), split into the data channels
  (DTLS/SCTP: keypoints, keyframes, control) and audio (SRTP), over the steady part of the
  call (after the first 3 s, which hold the keyframe);
* payload kbps: the bytes of the messages themselves (bitstream units, control messages);
* displayed frames per second and glass-to-glass latency: each frame's capture time at one
  peer (``time.time()`` when the source hands it over) against the time the other peer hands
  the rebuilt frame to its viewer, on the same clock (same process).

Two models: ``--model tiny20`` (the test model with K=20 keypoints, 64 px: renders in a few
ms, so latency and frame rate show the transport and pipeline, as a GPU would) and
``--model shipped`` (the trained 256 px weights: real keypoint statistics and keyframe size
for the bitrates; rendering off, since a CPU renders ~1 frame/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from bitstream import KeypointEncoder, KeypointFrame, encode_track
from codec.model import ImplicitWarpingModel
from codec.weights import DEFAULT_WEIGHTS, load_model
from iwcodec.call.loopback import (
    SAMPLE,
    Peer,
    model_track,
    retimed_sample,
    run_pair,
    tiny_model,
    trained_track,
)
from iwcodec.call.rtc import SackPolicy
from iwcodec.call.stats import CallReport
from sender.call import SendOptions
from sender.encoder import entropy_model, stream_params


def latency_stats(
    sender_report: CallReport, receiver_report: CallReport, skip_s: float = 3.0
) -> dict[str, float | None]:
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


def summarize(reports: list[CallReport], timeline: bool) -> dict[str, dict[str, object]]:
    """Each side's steady rates, totals and (with ``timeline``) the latency of the frames it
    showed, as the JSON of docs/calls.md records them."""
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
) -> dict[str, object]:
    """Keypoint message sizes for the model's own keypoints on real clips, coded exactly as a
    call codes them (``SendOptions().coding``: its quantization, table and resync period; N
    frames per unit, cut by ``bitstream.encode_track``), without real time: the CPU's speed
    does not change a byte. Whole messages only (a clip's last, shorter one is left out). Per
    N: mean bytes per message and the payload kbps at ``fps``."""
    coding = SendOptions().coding
    table = entropy_model(coding)
    params = stream_params(model, Fraction(fps), coding, table)
    tracks = [model_track(model, clip) for clip in clips]  # (T, K, 3) each
    by_n: dict[str, dict[str, float]] = {}
    for n in frames_per_message:
        sizes = []
        for kp in tracks:
            whole = len(kp) - len(kp) % n
            frames = [KeypointFrame(i, params.nominal_pts(i), kp[i], (0,)) for i in range(whole)]
            encoder = KeypointEncoder(params, table, resync_period=coding.resync_period)
            sizes += [len(unit.to_bytes()) for unit in encode_track(frames, encoder, n)]
        mean = float(np.mean(sizes))
        by_n[str(n)] = {
            "messages": len(sizes),
            "bytes_per_message": mean,
            "bytes_per_frame": mean / n,
            "payload_kbps": mean * fps / n * 8 / 1000,
        }
    frames = int(sum(len(t) for t in tracks))
    return {"clips": [c.name for c in clips], "frames": frames, "by_n": by_n}


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m iwcodec.call.measure", description=__doc__.split("\n\n")[0]
    )
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
    return parser


MODES = {
    "both": "both peers send and render",
    "wire": "both peers send; nothing is rendered (the CPU serves the transport)",
    "latency": "peer a sends, peer b renders and shows (one direction)",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    frames_list = [int(x) for x in args.frames.split(",")]
    sacks = [SackPolicy(x) for x in args.sack.split(",")]
    if args.quick:
        frames_list, sacks, args.seconds = [3], [SackPolicy.BUNDLED], 6.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model == "tiny20":
            model = tiny_model(tmp / "tiny20.safetensors", num_kp=20)
        else:
            model = load_model(DEFAULT_WEIGHTS)
        if args.offline_payload is not None:
            return _payload(args, model, frames_list)
        source = (
            SAMPLE if args.fps == "native" else retimed_sample(tmp / "in.mp4", Fraction(args.fps))
        )
        track = trained_track(source) if args.keypoints == "trained" else None
        runs = [_run(args, model, source, track, n, sack) for n in frames_list for sack in sacks]
    name = args.name or f"calls_{args.mode}_{args.fps}fps{'_quick' if args.quick else ''}.json"
    result = {
        "what": "two peers in one process on loopback; steady = after the first 3 s",
        "mode": MODES[args.mode],
        "model": args.model,
        "keypoints": "the shipped detector's, replayed"
        if args.keypoints == "trained"
        else "the model's own",
        "niceness": os.nice(0),
        "input": source.name if args.fps == "native" else f"sample.mp4 retimed to {args.fps} fps",
        "audio": args.audio,
        "audio_frame_ms": args.audio_frame_ms,
        "machine": machine(),
        "runs": runs,
    }
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / name}")
    return 0


def _payload(args: argparse.Namespace, model: ImplicitWarpingModel, frames: list[int]) -> int:
    result = offline_payload(model, args.offline_payload or [SAMPLE], frames)
    result.update(model=args.model, machine=machine())
    name = args.name or f"payload_{args.model}.json"
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["by_n"], indent=1))
    return 0


def _run(
    args: argparse.Namespace,
    model: ImplicitWarpingModel,
    source: Path,
    track: np.ndarray | None,
    n: int,
    sack: SackPolicy,
) -> dict[str, object]:
    """One call of the grid: ``n`` frames per message, acknowledgements by ``sack``."""
    send = SendOptions(frames_per_message=n, timeline=True, audio_frame_ms=args.audio_frame_ms)
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
    sides = summarize(reports, True)
    a_ = sides["a"]
    print(
        f"N={n} sack={sack.value:9s} wire data {a_['wire_kbps_sent_data']:.2f}/"
        f"{a_['wire_kbps_received_data']:.2f} kbps, payload {a_['payload_kbps_sent']:.2f}, "
        f"shown {a_['fps_shown']:.1f} fps, latency "
        f"{a_.get('latency_shown_here', {}).get('median_ms', float('nan')):.0f} ms",
        flush=True,
    )
    return {
        "frames_per_message": n,
        "sack": sack.value,
        "seconds": args.seconds,
        "wall_s": time.time() - start,
        **sides,
    }


if __name__ == "__main__":
    sys.exit(main())
