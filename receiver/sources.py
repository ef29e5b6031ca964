"""The receive core: the keyframe set and rendering from it, shared by the file decoder
(``receiver.decoder.Decoder``) and the receiving half of a call (``receiver.live``).

:class:`SourceSet` takes keyframe units and keeps, per keyframe, its decoded picture and its
source features: keypoints detected on the decoded picture, keys, values and pixels
(``model.encode_source``, paper section 3, "Learning queries, keys, and values"), computed once
per keyframe. A frame is rendered from the keyframes its keypoint unit names (``refs``): the
attention runs over the keys of all of them at once (paper section 3, "pick and choose" over
several sources; eq. 1), so the receiver's set is what the sender's choice of refs picks from.
On a CUDA device the render replays a CUDA graph per refs (``receiver.graphs``; same pixels,
a fraction of the launch overhead at batch 1), re-captured when a keyframe of the refs changes.

**The set is bounded, and both sides know what it holds** (docs/bitstream.md 3.2): keyframe
``k`` occupies slot ``bitstream.keyframe_slot(k)`` (``k mod 16``) and replaces whatever was
there. The sender chooses which keyframe a new one replaces by choosing its id (``sender.
keyframes.KeyframeSet``), so the rule needs no extra syntax and holds under loss: a lost
keyframe leaves its slot's old keyframe in place, whose id differs, so a unit that refers to
the new one finds it missing and is held (never rendered from the wrong picture). Memory:
at most 16 keyframes' features and pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bitstream import KeyframeUnit, ParamsUnit, keyframe_slot, quantize
from codec.inference import not_finite, picture_source, render_frames
from codec.model import ImplicitWarpingModel, SourceFeatures
from iwcodec.errors import ModelMismatchError
from receiver.audit import check_keyframe
from receiver.graphs import RenderGraphs


def check_stream(model: ImplicitWarpingModel, params: ParamsUnit) -> None:
    """Refuse a stream this model cannot rebuild (other weights, resolution or K)."""
    mine = (
        model.weights_id.hex() if model.weights_id is not None else "none (not loaded from a file)"
    )
    if params.weights_id != model.weights_id:
        raise ModelMismatchError(
            f"the stream was made with model weights {params.weights_id.hex()}, the loaded "
            f"weights are {mine}: decode it with the weights it was encoded with (--weights)"
        )
    size = model.cfg.image_size
    if (params.width, params.height) != (size, size):
        raise ModelMismatchError(
            f"the stream is {params.width}x{params.height}, the model rebuilds {size}x{size}"
        )
    if params.num_keypoints != model.cfg.num_kp:
        raise ModelMismatchError(
            f"the stream has {params.num_keypoints} keypoints per frame, the model "
            f"{model.cfg.num_kp}"
        )


def device_of(model: ImplicitWarpingModel) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class Keyframe:
    """One keyframe of the set: its id, decoded picture (H, W, 3) uint8 (read-only) and source
    features (batch 1)."""

    keyframe_id: int
    picture: np.ndarray
    features: SourceFeatures
    own_steps: np.ndarray  # (K, 3) int64: its keypoints quantized as a unit carries them


#: A frame whose quantized keypoints are all within this many steps of its one keyframe's own
#: is that keyframe (docs/bitstream.md 3.2). Not 0: the sender finds the keyframe's keypoints
#: with its own run of the detector, and a value that sits on a rounding boundary moves by one
#: step when two runs differ in the last bit (seen on a GPU: 3 of 12 val clips never matched).
#: A frame that close to its keyframe renders as that keyframe to within 45-54 dB anyway.
SAME_POSE_STEPS = 1


class SourceSet:
    """The receiver's keyframes (at most :data:`bitstream.KEYFRAME_SLOTS`), and rendering from
    them (see the module docstring).

    Args:
        model: the implicit-warping model (eval mode, on the device to render on); refuses a
            stream it cannot rebuild (:class:`ModelMismatchError`).
        params: the stream's parameter unit.
    """

    def __init__(self, model: ImplicitWarpingModel, params: ParamsUnit) -> None:
        check_stream(model, params)
        self.model = model
        self.params = params
        self._slots: dict[int, Keyframe] = {}  # slot -> keyframe
        self._combined: tuple[tuple[int, ...], SourceFeatures] | None = None  # last refs' set
        self._black: np.ndarray | None = None
        #: CUDA graphs of the render per refs (receiver.graphs; None: eager, as on a CPU)
        self.graphs: RenderGraphs | None = RenderGraphs.for_model(model)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, keyframe_id: int) -> bool:
        held = self._slots.get(keyframe_slot(keyframe_id))
        return held is not None and held.keyframe_id == keyframe_id

    @property
    def ids(self) -> tuple[int, ...]:
        """The ids held, in slot order."""
        return tuple(self._slots[s].keyframe_id for s in sorted(self._slots))

    @torch.inference_mode()
    def add(self, unit: KeyframeUnit) -> Keyframe:
        """Decode a keyframe and cache its source features in its slot, replacing the keyframe
        there. A keyframe that cannot be used (damaged image, wrong size) raises
        BitstreamError saying why, and leaves the set as it was."""
        rgb = check_keyframe(unit, self.params)  # BitstreamError: unusable
        feats, own = picture_source(self.model, rgb)  # (1, L, .), (K, 3)
        rgb.setflags(write=False)
        own_steps = quantize(own, self.params.xy_steps, self.params.s_steps)  # (K, 3)
        keyframe = Keyframe(unit.keyframe_id, rgb, feats, own_steps)
        self._slots[keyframe_slot(unit.keyframe_id)] = keyframe
        self._combined = None
        return keyframe

    def missing(self, refs: tuple[int, ...]) -> list[int]:
        """The keyframes of ``refs`` the set does not hold (never arrived, damaged, replaced)."""
        return [r for r in refs if r not in self]

    def features(self, refs: tuple[int, ...]) -> SourceFeatures | None:
        """Features of the keyframes ``refs`` as one key set (batch 1, the sources' tokens
        concatenated); None while one of them is missing."""
        if self._combined is not None and self._combined[0] == refs:
            return self._combined[1]
        if not refs or self.missing(refs):
            return None
        src = SourceFeatures.concat([self._slots[keyframe_slot(r)].features for r in refs])
        self._combined = (refs, src)
        return src

    def picture(self, refs: tuple[int, ...] | None = None) -> np.ndarray | None:
        """A decoded keyframe to show before any frame was rendered: the first of ``refs`` the
        set holds, else any; None while the set is empty."""
        for ref in refs or ():
            if ref in self:
                return self._slots[keyframe_slot(ref)].picture
        return next(iter(self._slots.values())).picture if self._slots else None

    def blank(self) -> np.ndarray:
        """The black picture of ``Fill.BLANK``, (H, W, 3) uint8, read-only, made once."""
        if self._black is None:
            self._black = np.zeros((self.params.height, self.params.width, 3), np.uint8)
            self._black.setflags(write=False)
        return self._black

    @torch.inference_mode()
    def render(self, refs: tuple[int, ...], keypoints: np.ndarray) -> np.ndarray | None:
        """Frames from the keyframes ``refs`` and keypoints (B, K, 3) rows (x, y, strength) ->
        (B, H, W, 3) uint8; None while one of ``refs`` is missing.

        A frame rebuilt from one keyframe with that keyframe's own keypoints (as this receiver
        finds them on the decoded picture, quantized with the stream's steps; each value within
        :data:`SAME_POSE_STEPS`) *is* that keyframe: it comes out as the decoded picture
        itself, not as the model's rendering of it (docs/bitstream.md 3.2). The sender uses
        this for the keyframe's own frame and wherever the frozen keyframe is closer to the
        truth than a render."""
        if self.missing(refs):
            return None
        if len(refs) > 1:
            return self._render(refs, keypoints)
        held = self._slots[keyframe_slot(refs[0])]
        steps = quantize(keypoints, self.params.xy_steps, self.params.s_steps)  # (B, K, 3)
        near = np.abs(steps - held.own_steps[None]) <= SAME_POSE_STEPS
        same = np.all(near, axis=(1, 2))  # (B,)
        if not same.any():
            return self._render(refs, keypoints)
        rgb = np.empty((len(keypoints), *held.picture.shape), np.uint8)  # (B, H, W, 3)
        rgb[same] = held.picture  # the keyframe itself: nothing to render
        if not same.all():
            rgb[~same] = self._render(refs, keypoints[~same])
        return rgb

    def _render(self, refs: tuple[int, ...], keypoints: np.ndarray) -> np.ndarray | None:
        src = self.features(refs)
        if src is None:
            return None
        if self.graphs is not None and self.graphs.takes(len(keypoints)):
            owners = [self._slots[keyframe_slot(r)] for r in refs]  # a replaced slot: recapture
            done = self.graphs.render(refs, owners, src, keypoints)
            if done is not None:
                rgb, finite = done
                if not finite:
                    raise not_finite("rendered frames")
                return rgb
        return render_frames(self.model, src, keypoints)  # (B, H, W, 3) uint8


__all__ = ["SAME_POSE_STEPS", "Keyframe", "SourceSet", "check_stream", "device_of"]
