"""Two network namespaces joined by an impaired link (loss, delay, rate), for call tests.

    sudo python -m iwcodec.call.netlab --loss 0.2 --delay 0.1 --rate 64000 \\
        --seconds 20 --out results/calls/impaired.json

The link is what ``tc netem`` makes of a veth pair: every packet is dropped with probability
``loss``, the others leave after the time their bytes take at ``rate`` bit/s (a FIFO of at most
``limit`` packets, as netem's default 1000) and arrive ``delay`` seconds later; each direction
on its own. Two ways to build it, tried in order:

* ``netem``: a veth pair between the namespaces with ``tc qdisc ... netem loss delay rate``
  on both ends (the kernel does the work);
* ``tun``: for kernels built without netem (this project's development VM has none): each
  namespace gets a TUN device and this process moves the IP packets between them, applying the
  same loss, delay, rate and queue limit.

Both need root (``ip netns add``); :func:`unavailable` says why a machine cannot.
:func:`impaired_call` runs the signaling server and one ``iwcodec call`` peer in each
namespace (the signaling server next to peer A, so peer B reaches it over the impaired link
too) and returns both peers' reports plus the link's own byte counts.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from iwcodec.call.loopback import SAMPLE, tiny_model

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"iwcprobe{os.getpid()}"
    probe = _ip("netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"ip netns add fails here: {probe.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def netem_available() -> bool:
    name = f"iwcnetem{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        r = subprocess.run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem"],
            capture_output=True,
            text=True,
        )
        return r.returncode == 0
    finally:
        _ip("netns", "del", name, check=False)


@dataclass
class Direction:
    """Counts of one direction of the emulated link (IP packets: headers included)."""

    packets_in: int = 0
    bytes_in: int = 0
    lost: int = 0  # random loss
    overflow: int = 0  # queue full
    packets_out: int = 0
    bytes_out: int = 0


class _Emulator(threading.Thread):
    """Moves IP packets between two TUN devices with loss, rate, queue limit and delay."""

    def __init__(
        self, fds: tuple[int, int], loss: float, delay: float, rate: float, limit: int, seed: int
    ):
        super().__init__(name="netlab-link", daemon=True)
        self.fds = fds
        self.loss, self.delay, self.rate, self.limit = loss, delay, rate, limit
        self.rng = random.Random(seed)
        self.stats = (Direction(), Direction())
        self._busy_until = [0.0, 0.0]  # when each direction's "wire" is free again
        self._queued = [0, 0]
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self._halt = threading.Event()

    def set(self, loss: float, delay: float, rate: float) -> None:
        self.loss, self.delay, self.rate = loss, delay, rate

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, fd in enumerate(self.fds):
            sel.register(fd, selectors.EVENT_READ, i)
        while not self._halt.is_set():
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, d, packet = heapq.heappop(self._heap)
                self._queued[d] -= 1
                try:
                    os.write(self.fds[1 - d], packet)
                except OSError:
                    continue
                self.stats[d].packets_out += 1
                self.stats[d].bytes_out += len(packet)
            timeout = 0.05 if not self._heap else max(0.0, min(0.05, self._heap[0][0] - now))
            for key, _ in sel.select(timeout):
                d = key.data
                try:
                    packet = os.read(self.fds[d], 65536)
                except OSError:
                    continue
                self._admit(d, packet, time.monotonic())

    def _admit(self, d: int, packet: bytes, now: float) -> None:
        st = self.stats[d]
        st.packets_in += 1
        st.bytes_in += len(packet)
        if self.rng.random() < self.loss:
            st.lost += 1
            return
        if self._queued[d] >= self.limit:
            st.overflow += 1
            return
        start = max(now, self._busy_until[d])
        done = start + (len(packet) * 8 / self.rate if self.rate else 0.0)
        self._busy_until[d] = done
        self._queued[d] += 1
        self._seq += 1
        heapq.heappush(self._heap, (done + self.delay, self._seq, d, packet))

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


@dataclass
class NetLab:
    """Namespaces ``<prefix>a`` (10.77.0.1) and ``<prefix>b`` (10.77.0.2) and the link."""

    loss: float = 0.2
    delay: float = 0.1
    rate: float = 64_000.0
    limit: int = 1000
    seed: int = 0
    prefix: str = field(default_factory=lambda: f"iwc{os.getpid() % 100000}")
    method: str = ""

    def __post_init__(self) -> None:
        self.ns = (f"{self.prefix}a", f"{self.prefix}b")
        self.addresses = ("10.77.0.1", "10.77.0.2")
        self._emulator: _Emulator | None = None
        self._fds: list[int] = []

    def __enter__(self) -> NetLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for ns in self.ns:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        try:
            if netem_available():
                self._veth()
            else:
                self._tun()
        except BaseException:
            self.stop()
            raise

    def _veth(self) -> None:
        self.method = "netem"
        a, b = f"{self.prefix}va", f"{self.prefix}vb"
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        for dev, ns, addr in (
            (a, self.ns[0], self.addresses[0]),
            (b, self.ns[1], self.addresses[1]),
        ):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            self._netem(ns, dev, "add")

    def _netem(self, ns: str, dev: str, verb: str) -> None:
        args = ["tc", "qdisc", verb, "dev", dev, "root", "netem", "limit", str(self.limit)]
        if self.loss:
            args += ["loss", f"{self.loss * 100:g}%"]
        if self.delay:
            args += ["delay", f"{self.delay * 1000:g}ms"]
        if self.rate:
            args += ["rate", f"{self.rate:g}bit"]
        subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True)

    def _tun(self) -> None:
        self.method = "tun"
        names = (f"{self.prefix}ta", f"{self.prefix}tb")
        for name, ns, addr in zip(names, self.ns, self.addresses):
            fd = _open_tun(name)
            self._fds.append(fd)
            _ip("link", "set", name, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", name)
            _ip("-n", ns, "link", "set", name, "up")
        self._emulator = _Emulator(
            (self._fds[0], self._fds[1]), self.loss, self.delay, self.rate, self.limit, self.seed
        )
        self._emulator.start()

    def impair(self, loss: float, delay: float, rate: float) -> None:
        """Change the link's impairments (both directions) while it runs."""
        self.loss, self.delay, self.rate = loss, delay, rate
        if self._emulator is not None:
            self._emulator.set(loss, delay, rate)
        else:
            for ns, dev in zip(self.ns, (f"{self.prefix}va", f"{self.prefix}vb")):
                self._netem(ns, dev, "change")

    def link_counts(self) -> dict:
        """Bytes and packets that went into each direction of the link (IP headers included)."""
        if self._emulator is not None:
            a_to_b, b_to_a = self._emulator.stats
            return {"a_to_b": asdict(a_to_b), "b_to_a": asdict(b_to_a)}
        out = {}
        for key, ns, dev in (
            ("a_to_b", self.ns[0], f"{self.prefix}va"),
            ("b_to_a", self.ns[1], f"{self.prefix}vb"),
        ):
            stats = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "cat",
                    f"/sys/class/net/{dev}/statistics/tx_bytes",
                    f"/sys/class/net/{dev}/statistics/tx_packets",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            # veth counts Ethernet frames: remove the 14-byte header to compare with IP bytes
            packets = int(stats[1])
            out[key] = {"packets_in": packets, "bytes_in": int(stats[0]) - 14 * packets}
        return out

    def popen(self, side: int, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns[side], *argv], **kwargs)

    def stop(self) -> None:
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for ns in self.ns:
            _ip("netns", "del", ns, check=False)


def impaired_call(
    lab: NetLab,
    weights: Path,
    seconds: float,
    workdir: Path,
    input_path: Path | None = None,
    impair_after_connect: bool = False,
    extra: tuple[str, ...] = (),
) -> dict:
    """Run the signaling server and two ``iwcodec call`` peers across ``lab``'s link."""
    input_path = input_path or SAMPLE
    port, token = 8765, "netlab-call-token"
    env = {**os.environ, "IWCODEC_TOKEN": token}
    py = sys.executable
    server = lab.popen(
        0,
        [py, "-m", "iwcodec", "signal", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peers = []
    try:
        for line in server.stdout:
            if "listening" in line:
                break
        url = f"ws://{lab.addresses[0]}:{port}/ws"
        wanted = (lab.loss, lab.delay, lab.rate)
        if impair_after_connect:
            lab.impair(0.0, 0.0, 0.0)
        for side in (0, 1):
            stats = workdir / f"peer_{'ab'[side]}.json"
            argv = [
                py, "-m", "iwcodec", "call", "--room", "lab", "--signal", url,
                "--input", str(input_path), "--weights", str(weights), "--device", "cpu",
                "--no-view", "--duration", str(seconds), "--wait", "60", "--stats", str(stats),
                "--timeline", "--audio", "tone", "--quiet", *extra,
            ]  # fmt: skip
            log = open(workdir / f"peer_{'ab'[side]}.log", "w")
            peers.append(
                (lab.popen(side, argv, env=env, stdout=log, stderr=subprocess.STDOUT), stats, log)
            )
        if impair_after_connect:
            time.sleep(8.0)
            lab.impair(*wanted)
        samples = []  # (wall time, link counts): rates over the same window as the peers'
        deadline = time.monotonic() + seconds + 120
        while any(p.poll() is None for p, _, _ in peers) and time.monotonic() < deadline:
            samples.append((time.time(), lab.link_counts()))
            time.sleep(0.5)
    finally:
        for proc, _, log in peers:
            if proc.poll() is None:
                proc.kill()
            log.close()
        server.terminate()
        server.wait(10)
    reports = []
    for proc, stats, _ in peers:
        if proc.returncode != 0 or not stats.exists():
            log = (workdir / f"{stats.stem}.log").read_text()[-3000:]
            raise RuntimeError(f"{stats.stem} failed (status {proc.returncode}):\n{log}")
        reports.append(json.loads(stats.read_text()))
    return {"reports": reports, "link_samples": samples}


def summarize(result: dict, lab: NetLab) -> dict:
    """Delivered frame rate, bitrates, loss and recovery times of an impaired call."""
    out = {"method": lab.method, "loss": lab.loss, "delay_s": lab.delay, "rate_bps": lab.rate}
    reports = result["reports"]
    # A peer whose SCTP handshake is still retransmitting (T1 timer: 3 s, then doubling;
    # RFC 4960 section 5.1) already receives and shows frames but cannot yet ask for a resync.
    # Freezes are counted from the moment both peers are in the call; the wait is reported.
    connected = [r["summary"].get("connected_at") for r in reports]
    in_call = -np.inf
    if None not in connected:
        in_call = max(connected)
        out["connect_skew_s"] = abs(connected[0] - connected[1])
    for name, mine, theirs in (("a", reports[0], reports[1]), ("b", reports[1], reports[0])):
        steady = mine["summary"].get("steady", {})
        totals = mine["summary"].get("totals", {})
        shown = sorted(float(t) for t in mine["timeline"].get("shown", {}).values())
        shown_in_call = [t for t in shown if t >= in_call]
        gaps = np.diff(shown_in_call) if len(shown_in_call) > 1 else np.zeros(0)
        capture = theirs["timeline"].get("capture", {})
        lat = [
            mine["timeline"]["shown"][k] - capture[k]
            for k in mine["timeline"].get("shown", {})
            if k in capture
        ]
        recov = mine["summary"].get("outages_s", [])
        decoded, lost = totals.get("rx_frames_decoded", 0), totals.get("rx_frames_lost", 0)
        out[f"shown_by_{name}"] = {
            "fps_shown_steady": steady.get("fps_shown"),
            "frames_shown": totals.get("frames_shown"),
            "frames_decoded": decoded,
            "frames_lost": lost,
            "lost_fraction": lost / (decoded + lost) if decoded + lost else None,
            "longest_freeze_s": float(gaps.max()) if len(gaps) else None,
            "freezes_over_200ms": int((gaps > 0.2).sum()),
            "outages": len(recov),
            "outage_median_s": float(np.median(recov)) if recov else None,
            "outage_p90_s": float(np.percentile(recov, 90)) if recov else None,
            "outage_max_s": float(np.max(recov)) if recov else None,
            "latency_median_ms": float(np.median(lat) * 1000) if lat else None,
            "latency_p90_ms": float(np.percentile(lat, 90) * 1000) if lat else None,
        }
        out[f"sent_by_{name}"] = {
            "payload_kbps": steady.get("payload_kbps_sent"),
            "payload_kbps_keypoints": steady.get("payload_kbps_sent_keypoints"),
            "wire_kbps_data": steady.get("wire_kbps_sent_data"),
            "wire_kbps_audio": steady.get("wire_kbps_sent_audio"),
            "wire_kbps_all": steady.get("wire_kbps_sent"),
            "resync_units": totals.get("resync_units_sent"),
            "resync_requests_received": totals.get("resync_requests_received"),
            "keyframes": totals.get("keyframes_sent"),
        }
    # the link's own count of each direction over its sender's steady window (after the
    # sender's first 3 s in the call), beside the sender's own count over the same samples
    samples = result["link_samples"]
    for d, report in (("a_to_b", reports[0]), ("b_to_a", reports[1])):
        series = report.get("series") or []
        if not series or len(samples) < 2:
            continue
        t0, t1 = series[0]["t"] + 3.0, series[-1]["t"]
        window = [s for s in samples if t0 <= s[0] <= t1]
        if len(window) < 2:
            continue
        (ta, ca), (tb, cb) = window[0], window[-1]
        for key, field_ in (("link_kbps_in", "bytes_in"), ("link_kbps_delivered", "bytes_out")):
            if field_ in cb[d]:
                rate = (cb[d][field_] - ca[d][field_]) * 8 / (tb - ta) / 1000
                out.setdefault(key, {})[d] = rate
        # the peer's counters at its series samples nearest the link window's ends
        pa = min(series, key=lambda c: abs(c["t"] - ta))
        pb = min(series, key=lambda c: abs(c["t"] - tb))
        if pb["t"] > pa["t"]:
            sent = sum(
                pb[k] - pa.get(k, 0)
                for k in pb
                if k.startswith("wire_sent_") and k.endswith("_bytes")
            )
            out.setdefault("peer_kbps_in_link_window", {})[d] = (
                sent * 8 / (pb["t"] - pa["t"]) / 1000
            )
        if "lost" in cb[d]:
            counts = {k: cb[d][k] - ca[d][k] for k in ("packets_in", "lost", "overflow")}
            out.setdefault("link_counts", {})[d] = counts
    out["ended"] = [r["ended"] for r in reports]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iwcodec.call.netlab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--loss", type=float, default=0.2)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--rate", type=float, default=64000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--weights", type=Path, default=None, help="default: a tiny K=20 model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--impair-after-connect", action="store_true")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = tmp / "tiny20.safetensors"
            tiny_model(weights, num_kp=20)
        with NetLab(args.loss, args.delay, args.rate) as lab:
            result = impaired_call(
                lab, weights, args.seconds, tmp, impair_after_connect=args.impair_after_connect
            )
            summary = summarize(result, lab)
    summary["seconds"] = args.seconds
    summary["impair_after_connect"] = args.impair_after_connect
    summary["load_average_1m"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
