"""Two peers in one process on loopback, through a signaling server: what the call tests and
the measurements of docs/calls.md (``iwcodec.call.measure``) run.

:func:`run_pair` runs a real call (signaling, ICE, DTLS, SCTP, Opus) between two
:class:`Peer` s, each sending the bundled sample (or another clip) in a loop, and returns both
reports. The stand-ins a measurement on a CPU needs are here too: :func:`tiny_model` (a random
64 px model that renders in a few ms, so frame rate and latency show the transport and the
pipeline, as a GPU would), :class:`ReplayedKeypoints` (the trained detector's keypoints of
the clip, replayed, so the bytes have real statistics without running the 256 px detector
twice in real time) and :class:`SilentSender` (a peer that only receives).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path

import av
import numpy as np
import torch
from aiortc.mediastreams import MediaStreamTrack

from codec.config import tiny_config
from codec.model import ImplicitWarpingModel
from codec.weights import DEFAULT_WEIGHTS, load_model, save_weights
from iwcodec.call.halves import CallHooks, OutgoingHalf
from iwcodec.call.rtc import SackPolicy
from iwcodec.call.session import CallOptions, run_call
from iwcodec.call.signaling import SignalingServer
from iwcodec.call.stats import CallReport
from sender.call import CallSender, Link, SenderStats, SendOptions
from sender.encoder import crop_input, detect_keypoints
from sender.live import FileSource, SilenceInput, ToneInput

#: The bundled sample clip (256x256, 35 fps, 150 frames of a talking face).
SAMPLE = Path(str(resources.files("iwcodec") / "samples" / "sample.mp4"))
#: The token of the server :func:`run_pair` starts.
TOKEN = "loopback-call-token"


def tiny_model(path: Path, seed: int = 0, num_kp: int | None = None) -> ImplicitWarpingModel:
    """A random model of the tiny test config (K = ``num_kp`` if given), saved to ``path`` and
    loaded back, so that it has a weights id as shipped weights do."""
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


def model_track(model: ImplicitWarpingModel, clip: Path) -> np.ndarray:
    """``model``'s keypoints on a clip's face crops, (T, K, 3)."""
    frames = crop_input(clip, model.cfg.image_size).frames
    return detect_keypoints(model, frames, progress=False)


def trained_track(clip: Path) -> np.ndarray:
    """The shipped model's keypoints on a clip's face crops, (T, K, 3)."""
    return model_track(load_model(DEFAULT_WEIGHTS), clip)


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

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters(recurse)

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = image.shape[0]  # image (B, 3, H, W)
        idx = torch.arange(self.position, self.position + b) % len(self.track)
        self.position += b
        kp = self.track[idx]  # (B, K, 3)
        return kp[..., :2].clone(), kp[..., 2].clone()  # (B, K, 2), (B, K)


class SilentSender:
    """A sending half that introduces itself like ``sender`` but sends nothing: for one-way
    measurements, so that the machine's CPU serves one direction only."""

    def __init__(self, sender: CallSender) -> None:
        self._hello = sender.hello()
        self.audio_track: MediaStreamTrack | None = None
        self.stats: SenderStats = sender.stats
        self.resilient = False

    def hello(self) -> dict[str, object]:
        return self._hello

    async def run(self, link: Link) -> None:
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
    extra: dict[str, object] = field(default_factory=dict)  # other CallOptions fields
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
    token: str = TOKEN,
    server: SignalingServer | None = None,
    senders: tuple[OutgoingHalf, OutgoingHalf] | None = None,
) -> list[CallReport | BaseException]:
    """Run a call between ``a`` and ``b`` for ``seconds``; returns both reports (or the
    exception each side ended with). ``senders`` replaces the peers' own sending halves."""
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


__all__ = [
    "SAMPLE",
    "TOKEN",
    "Peer",
    "ReplayedKeypoints",
    "SilentSender",
    "model_track",
    "retimed_sample",
    "run_pair",
    "tiny_model",
    "trained_track",
]
