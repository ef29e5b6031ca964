"""How a call works: two peers, each running ``iwcodec call``, over WebRTC (aiortc).

The two halves of the codec stay in their folders and know nothing of WebRTC: the sending
half (``sender.call.CallSender``: camera or file -> face crop -> keypoints -> units through
``sender.core.SendCore``, the send core that file encoding uses too) and the receiving half
(``receiver.live.LiveReceiver``: units -> rendered frames, on a worker thread). This package
joins them to a peer connection; each module is one stage of the session:

| module | what it does |
|---|---|
| ``session`` | ``run_call(options, model, outgoing) -> CallReport``: the stages below, in order |
| ``halves`` | the typed interfaces to the halves (``OutgoingHalf``) and the observers (``CallHooks``) |
| ``negotiation`` | meeting in the room, the hello check (same weights, a known entropy table), SDP offer and answer |
| ``signaling`` | the rooms server (``iwcodec signal``) and its client; it relays hellos and SDP, never media |
| ``media`` | the data channels (``kp`` keypoints, ``kf`` parameter and keyframe units, ``ctl`` control), the sending half's link, the audio track |
| ``control_loop`` | resync and keyframe requests, round-trip probes, both directions |
| ``control`` | the control messages on the wire (3-9 bytes each) |
| ``playout`` | the other peer's frames shown at their own pace, on the page and in the recording |
| ``stats`` | ``CallStats``, the one record every part writes; live figures and the final ``CallReport`` |
| ``rtc`` | aiortc plumbing: ICE servers, the SCTP acknowledgement policy, wire byte counting |
| ``viewer`` | the local page: the other side rebuilt, this side's crop, live figures |
| ``loopback`` | two peers in one process (what the call tests and measurements run) |
| ``measure``, ``netlab`` | the measurements of docs/calls.md: ``python -m iwcodec.call.measure``, ``python -m iwcodec.call.netlab`` |

A frame's path through a call: ``CallSender._step`` (crop, keypoints, ``SendCore.frame``)
-> ``media.SenderLink`` -> data channel -> ``media.Channels`` -> ``LiveReceiver.push_*``
(parse, decode, render) -> ``playout.Screen`` (due time, page, recording). docs/calls.md has
the protocol, the measurements and the limits.
"""
