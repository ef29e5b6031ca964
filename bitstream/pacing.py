"""How often a call may carry a keyframe: one token-bucket rule that both ends apply.

Each keyframe costs the receiver an image decode and a feature pass on its render thread, so a
receiver drops keyframes that come faster than :data:`RECEIVER` allows (a hostile peer cannot
flood it). An honest sender must then never be dropped: it spends from the stricter
:data:`SENDER` bucket, whose long-run rate and burst are below the receiver's with room for
arrival jitter (the receiver's window can be up to 1.5 s shorter than the sender's and still
hold every keyframe the sender let through). A face that comes back while the sender's bucket
is empty is sent as "no face" until a token is there (docs/calls.md, "Keyframes").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PacingRule:
    """At most ``burst`` keyframes at once, then one more every ``interval`` seconds."""

    interval: float
    burst: int


RECEIVER = PacingRule(interval=1.0, burst=3)
SENDER = PacingRule(interval=1.5, burst=2)


class KeyframePacer:
    """A token bucket over a monotonic clock (seconds)."""

    def __init__(self, rule: PacingRule) -> None:
        self.rule = rule
        self._tokens = float(rule.burst)
        self._t: float | None = None

    def _refill(self, t: float) -> None:
        if self._t is not None and t > self._t:
            self._tokens = min(self.rule.burst, self._tokens + (t - self._t) / self.rule.interval)
        if self._t is None or t > self._t:
            self._t = t

    def ready(self, t: float) -> bool:
        """Whether a keyframe at time ``t`` would be allowed (spends nothing)."""
        self._refill(t)
        return self._tokens >= 1.0

    def take(self, t: float) -> bool:
        """Spend a token for a keyframe at time ``t``; False (nothing spent) if none is left."""
        if not self.ready(t):
            return False
        self._tokens -= 1.0
        return True
