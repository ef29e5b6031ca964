"""A call's numbers: one typed record that every part of the call writes, and what is read
from it (the page's live figures, the status line, the final :class:`CallReport`).

:class:`CallStats` holds what the call itself counts: bytes on the wire (``WireCounter``),
payload bytes per data channel, control and setup events (:class:`CallEvents`), the round
trip, the latency estimate and the display times. The two halves keep their own counters
(``sender.call.SenderStats``, ``receiver.live.ReceiverStats``); :func:`snapshot` puts all
three into one row of cumulative counters, and rates are differences between rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from iwcodec.call.rtc import WireCounter
from receiver.live import ReceiverStats
from sender.call import SenderStats

#: Seconds over which the page's rates are computed.
STATS_WINDOW = 2.0
#: The report's steady figures leave out the call's first seconds (they hold the keyframe).
STEADY_AFTER = 3.0
#: Per-frame times kept for the timeline, at most.
MAX_TIMELINE = 1_000_000
_WIRE_KINDS = ("stun", "dtls", "srtp", "other")
_RECEIVER_KEYS = (
    "frames_decoded",
    "frames_lost",
    "frames_rendered",
    "frames_skipped",
    "keyframes",
    "damaged_messages",
    "resync_units",
    "frames_without_keyframe",
    "early_units",
    "dropped_keyframes",
    "overflow",
)

#: One snapshot of cumulative counters: ``t`` (``time.time()``) and counts by name.
Row = dict[str, float]
#: Figures for people and JSON (rates may be unknown: None).
Figures = dict[str, float | int | str | bool | None]


@dataclass
class CallEvents:
    """What the call itself counted (the halves count the rest)."""

    resync_requests_sent: int = 0
    keyframe_requests_sent: int = 0
    resync_requests_received: int = 0
    keyframe_requests_received: int = 0
    bad_control: int = 0  # control messages that did not parse, text messages, failed handlers
    bad_setup_messages: int = 0  # malformed SDP relays while connecting
    late_frames: int = 0  # rendered after a later frame was already shown
    audio_frames: int = 0
    audio_samples: int = 0
    pings: int = 0
    pongs: int = 0


@dataclass
class CallStats:
    """The call's shared record (see the module docstring); written on the loop's thread."""

    channels: tuple[str, ...]
    wire: WireCounter = field(default_factory=WireCounter)
    events: CallEvents = field(default_factory=CallEvents)
    payload_sent: dict[str, int] = field(init=False)  # message bytes by channel
    payload_received: dict[str, int] = field(init=False)
    frames_shown: int = 0
    rtt: float | None = None  # seconds, smoothed
    remote_send_delay: float = 0.0  # the other sender's capture-to-send delay (its PING)
    latency: float | None = None  # glass-to-glass estimate, seconds, smoothed
    connected_at: float | None = None  # time.time() when the call began
    shown_at: dict[int, float] = field(default_factory=dict)  # timeline: index -> time.time()
    ready_at: dict[int, float] = field(default_factory=dict)
    series: list[Row] = field(default_factory=list)  # a row every 0.5 s, the last hour

    def __post_init__(self) -> None:
        self.payload_sent = dict.fromkeys(self.channels, 0)
        self.payload_received = dict.fromkeys(self.channels, 0)

    def smooth_rtt(self, rtt: float) -> None:
        self.rtt = rtt if self.rtt is None else self.rtt + 0.3 * (rtt - self.rtt)

    def smooth_latency(self, estimate: float) -> None:
        self.latency = (
            estimate if self.latency is None else self.latency + 0.1 * (estimate - self.latency)
        )


@dataclass
class CallReport:
    """What a call did: ``summary`` (averages), ``series`` (cumulative counters once a second),
    ``timeline`` (per-frame times, when asked)."""

    room: str
    role: str
    ended: str
    seconds: float
    peer: dict[str, object]
    summary: dict[str, object]
    series: list[Row] = field(default_factory=list)
    timeline: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def snapshot(stats: CallStats, sent: SenderStats, received: ReceiverStats | None) -> Row:
    """Cumulative counters now (bytes, packets, frames) of the call and both halves."""
    wire = stats.wire.snapshot()
    row: Row = {"t": time.time()}
    for direction, table in (("sent", wire.sent), ("received", wire.received)):
        for kind, tally in table.items():
            row[f"wire_{direction}_{kind}_bytes"] = tally.bytes
            row[f"wire_{direction}_{kind}_packets"] = tally.packets
    for name in stats.channels:
        row[f"payload_sent_{name}"] = stats.payload_sent[name]
        row[f"payload_received_{name}"] = stats.payload_received[name]
    row["frames_sent"] = sent.frames_sent
    row["keyframes_sent"] = sent.keyframes
    row["resync_units_sent"] = sent.resync_units
    row["frames_shown"] = stats.frames_shown
    if received is not None:
        for key in _RECEIVER_KEYS:
            row[f"rx_{key}"] = getattr(received, key)
    row.update(asdict(stats.events))
    return row


def _kbps(nbytes: float, seconds: float) -> float | None:
    return nbytes * 8 / seconds / 1000 if seconds > 0 else None


def rates(a: Row, b: Row, channels: tuple[str, ...]) -> dict[str, float | None]:
    """Rates between two snapshots: payload and wire kbps, packets and frames per second."""
    dt = b["t"] - a["t"]

    def diff(*keys: str) -> float:
        return sum(b.get(k, 0) - a.get(k, 0) for k in keys)

    def per_second(n: float) -> float | None:
        return n / dt if dt > 0 else None

    def wire(direction: str, kinds: tuple[str, ...]) -> float | None:
        return _kbps(diff(*(f"wire_{direction}_{k}_bytes" for k in kinds)), dt)

    return {
        "payload_kbps_sent": _kbps(diff(*(f"payload_sent_{n}" for n in channels)), dt),
        "payload_kbps_received": _kbps(diff(*(f"payload_received_{n}" for n in channels)), dt),
        "payload_kbps_sent_keypoints": _kbps(diff("payload_sent_kp"), dt),
        "wire_kbps_sent": wire("sent", _WIRE_KINDS),
        "wire_kbps_received": wire("received", _WIRE_KINDS),
        "wire_kbps_sent_data": wire("sent", ("dtls",)),
        "wire_kbps_received_data": wire("received", ("dtls",)),
        "wire_kbps_sent_audio": wire("sent", ("srtp",)),
        "wire_kbps_received_audio": wire("received", ("srtp",)),
        "wire_packets_per_s_sent": per_second(
            diff(*(f"wire_sent_{k}_packets" for k in _WIRE_KINDS))
        ),
        "fps_sent": per_second(diff("frames_sent")),
        "fps_shown": per_second(diff("frames_shown")),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def live(
    stats: CallStats,
    sent: SenderStats,
    received: ReceiverStats,
    device: str,
    resilient: bool,
) -> Figures:
    """The page's figures now (rates over the last :data:`STATS_WINDOW` seconds); adds a row to
    ``stats.series``."""
    now = snapshot(stats, sent, received)
    stats.series.append(now)
    while len(stats.series) > 1 and stats.series[0]["t"] < now["t"] - 3600:
        stats.series.pop(0)
    window = [row for row in stats.series if row["t"] >= now["t"] - STATS_WINDOW]
    figures: Figures = dict(rates(window[0], now, stats.channels)) if len(window) > 1 else {}
    note = ""
    if device == "cpu" and received.render_seconds > 0:
        note = (
            f"rendering on the CPU: at most {1 / received.render_seconds:.1f} frames per second "
            "(a GPU renders every frame)"
        )
    return {
        **figures,
        "keyframes_sent": now["keyframes_sent"],
        "keyframes_received": received.keyframes,
        "frames_lost": received.frames_lost,
        "resync_requests": stats.events.resync_requests_sent,
        "latency_ms": _ms(stats.latency),
        "rtt_ms": _ms(stats.rtt),
        "device": device,
        "device_note": note,
        "resilient": resilient,
    }


def summary(
    stats: CallStats, sent: SenderStats, received: ReceiverStats | None
) -> tuple[dict[str, object], list[Row]]:
    """The report's summary (whole call, steady part, totals) and its series, a row a second."""
    series = stats.series[::2]
    if received is None or not series:
        return {}, series
    last = snapshot(stats, sent, received)
    out: dict[str, object] = {"whole_call": rates(series[0], last, stats.channels)}
    steady = [row for row in series if row["t"] >= series[0]["t"] + STEADY_AFTER]
    if steady:
        out["steady"] = rates(steady[0], last, stats.channels)
    out["totals"] = last
    out["outages_s"] = list(received.outages)
    out["render_ms"] = received.render_seconds * 1000
    out["rtt_ms"] = _ms(stats.rtt)
    out["latency_estimate_ms"] = _ms(stats.latency)
    out["connected_at"] = stats.connected_at  # wall clock, like the timeline
    return out, series


def timeline(
    stats: CallStats, sent: SenderStats, received: ReceiverStats | None
) -> dict[str, dict[str, float]]:
    """Per-frame times (``time.time()``) by stream index: captured here, and of the other
    peer's frames arrived, rendered and shown here."""

    def keyed(times: dict[int, float]) -> dict[str, float]:
        return {str(k): v for k, v in times.items()}

    return {
        "capture": keyed(sent.capture_times),
        "arrival": keyed(received.arrivals if received is not None else {}),
        "ready": keyed(stats.ready_at),
        "shown": keyed(stats.shown_at),
    }


def status_line(figures: Figures) -> str:
    """One line for the terminal."""

    def f(x: object, digits: int = 1) -> str:
        return "-" if not isinstance(x, (int, float)) else f"{x:.{digits}f}"

    return (
        f"sent {f(figures.get('payload_kbps_sent'), 2)} kbps payload / "
        f"{f(figures.get('wire_kbps_sent_data'), 1)} kbps wire (keypoints) / "
        f"{f(figures.get('wire_kbps_sent'), 1)} kbps wire (all); received "
        f"{f(figures.get('fps_shown'))} fps shown, latency {f(figures.get('latency_ms'), 0)} ms, "
        f"{figures.get('frames_lost', 0)} frames lost"
    )


__all__ = [
    "CallEvents",
    "CallReport",
    "CallStats",
    "Figures",
    "Row",
    "live",
    "rates",
    "snapshot",
    "status_line",
    "summary",
    "timeline",
]
