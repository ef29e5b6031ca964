"""A call across an impaired link: two network namespaces joined by a link that loses 20 % of
the packets, delays them 100 ms and carries 64 kbit/s each way (iwcodec.call.netlab: veth +
tc netem where the kernel has netem, else the same impairments applied to TUN devices).

The two peers and the signaling server run as ``iwcodec`` processes, one peer per namespace;
the call is set up across the impaired link too. Checked: the call survives to its end, frames
keep arriving once both peers are in the call (before that, a peer whose SCTP handshake is
still on its 3 s retransmission timer cannot ask for resyncs: docs/calls.md section 6), lost
keypoint units are followed by recovery (resync units) within a bounded outage, and the wire
counts of the peers match what the link itself carried.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from iwcodec.call import netlab
from iwcodec.call.loopback import tiny_model

WHY = netlab.unavailable()
pytestmark = [
    pytest.mark.skipif(WHY is not None, reason=f"network namespaces cannot be made here: {WHY}"),
    pytest.mark.realtime,
]
#: The link's loss is checked over the steady part (after 3 s): 12 s leave about 240 packets a
#: direction, so 0.1-0.3 for 20 % loss is still about 4 standard deviations either side.
SECONDS = 12.0


@pytest.mark.slow
def test_call_survives_loss_delay_and_a_slow_link(tmp_path):
    weights = tmp_path / "tiny20.safetensors"
    tiny_model(weights, num_kp=20)
    with netlab.NetLab(loss=0.2, delay=0.1, rate=64_000) as lab:
        result = netlab.impaired_call(lab, weights, SECONDS, tmp_path)
        summary = netlab.summarize(result, lab)
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))
    assert all(e in ("duration reached", "the other peer hung up") for e in summary["ended"])
    # frames can arrive only while the other peer still sends: the call ends for each peer
    # when its own duration is up, and the two clocks start at their own connections
    sending_until = min(report["series"][-1]["t"] for report in result["reports"])
    for side, report in zip("ab", result["reports"]):
        shown = summary[f"shown_by_{side}"]
        sent = summary[f"sent_by_{'ba'[side == 'b']}"]
        # frames keep arriving through the call: no long freeze, a steady rate
        times = np.sort([float(t) for t in report["timeline"]["shown"].values()])
        assert len(times) > 5 * SECONDS / 2, f"{side}: only {len(times)} frames shown"
        assert shown["longest_freeze_s"] < 3.0, (shown, summary.get("connect_skew_s"))
        assert sending_until - times[-1] < 2.0, "frames stopped before the end"
        # the loss hit, and every loss was recovered from
        assert shown["frames_lost"] > 0
        assert shown["outages"] > 3
        assert shown["outage_median_s"] < 1.0, shown
        assert sent["resync_units"] > 5
        assert report["summary"]["totals"]["resync_requests_sent"] > 0
    if "link_kbps_in" in summary:
        # the peers' own wire counts agree with what entered the link (IP packets)
        for direction in ("a_to_b", "b_to_a"):
            mine = summary["peer_kbps_in_link_window"][direction]
            link = summary["link_kbps_in"][direction]
            assert abs(mine - link) < 0.1 * link + 1.0, (direction, mine, link)
    if "link_counts" in summary:
        for direction in ("a_to_b", "b_to_a"):
            counts = summary["link_counts"][direction]
            assert 0.1 < counts["lost"] / counts["packets_in"] < 0.3, counts
