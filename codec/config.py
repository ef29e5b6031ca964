"""Model hyper-parameters (one config, saved next to every checkpoint and inside the weights).

Defaults follow the implicit-warping paper (Mallya et al., NeurIPS 2022) section 3 and the
supplementary section C, scaled down to travel (<= 8M parameters):

* keypoint detector: FOMM hourglass (Siarohin et al. 2019, section 3 / appendix) at 1/4
  resolution, K = 20 keypoints plus a strength in [0, 1] per keypoint;
* query and key U-Nets at 1/4 resolution projected to ``attn_dim`` (d);
* value encoder: a 3-layer conv net with two downsampling convs to ``value_dim`` (d');
* ``num_extra_kv`` (about 400) learned key/value pairs;
* decoder: ``decoder_res_blocks`` (8) pre-activation residual blocks and 2 upsampling blocks;
* not in the paper: a keypoint motion prior on the keys' positions, and two masks after the
  decoder that blend in the source warped by the attention's flow and by the keypoints' own
  motion (codec.model, docs/model.md).

``ModelConfig()`` is the shipped model (codec/weights/iwcodec-256.safetensors); the variants
earlier versions could switch on or off are fixed now (:data:`RETIRED_SWITCHES`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 256
    num_kp: int = 20
    # Keypoint detector (hourglass on the image downsampled by ``feature_stride``).
    kp_block_expansion: int = 32
    kp_num_blocks: int = 5
    kp_max_features: int = 128
    kp_temperature: float = 0.1  # FOMM: softmax temperature of the heatmaps
    # Spatial keypoint maps: a Gaussian of this variance (in [-1, 1] units) per keypoint.
    kp_variance: float = 0.01
    # Query / key U-Nets (supplementary Fig. 9).
    unet_block_expansion: int = 32
    unet_num_blocks: int = 4
    unet_max_features: int = 128
    attn_dim: int = 128  # d
    value_dim: int = 128  # d'
    num_extra_kv: int = 400
    # Initial position embeddings: an RBF kernel of this width (in [-1, 1] units) and this peak
    # logit, i.e. a local identity warp at step 0 (codec.model.PositionEncoding).
    pos_init_sigma: float = 0.06
    pos_init_logit: float = 12.0
    # Motion prior on the keys' positions (codec.model.ImplicitWarpingModel.source_positions)
    # and its backward form, the prior warp (ImplicitWarpingModel.prior_flow): Gaussian width
    # of a keypoint's influence, and the distance (in widths) at which the still background
    # weighs as much as one keypoint.
    motion_sigma: float = 0.2
    motion_background: float = 2.0
    # MLP of the residual branch (Fig. 3, purple), on [A K, A P]: Fig. 3 also feeds it the
    # queries, left out here (docs/model.md, design item 2).
    residual_hidden: int = 256
    # Decoder.
    decoder_res_blocks: int = 8
    decoder_channels: tuple[int, ...] = (64, 32)  # after the 1st and 2nd upsampling block
    # 1/4 resolution everywhere the paper says so.
    feature_stride: int = 4

    def __post_init__(self) -> None:
        if self.image_size % (self.feature_stride * 2**self.kp_num_blocks) != 0:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by "
                f"{self.feature_stride * 2**self.kp_num_blocks} for this config"
            )
        if len(self.decoder_channels) != 2 or self.feature_stride != 4:
            raise ValueError("the decoder has exactly 2 upsampling blocks (feature_stride 4)")
        if not 1 <= self.num_kp <= 255:
            raise ValueError("num_kp must be in 1..255")

    @property
    def patch_channels(self) -> int:
        """Channels of a source token's full-resolution pixel patch (the source warps sample
        the source at full resolution from these): 48 at feature_stride 4."""
        return 3 * self.feature_stride**2

    @property
    def feature_size(self) -> int:
        """Side of the query/key grid: 64 for 256x256 images."""
        return self.image_size // self.feature_stride

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Config from a stored dict (weights, checkpoints, exported runs): see
        :func:`read_stored_config`."""
        return read_stored_config(d)[0]

    def to_json(self) -> str:
        """The stored form (weights files, checkpoints): the fields, and the retired switches
        at the values the model always has, so that a file written now reads as having its
        refinements (:func:`read_stored_config` takes a config that does not name one as
        predating it: run20 and run21's files were written without them)."""
        return json.dumps(self.to_dict() | RETIRED_SWITCHES, sort_keys=True)


def tiny_config(image_size: int = 64) -> ModelConfig:
    """A very small model for CPU tests (same code paths, a fraction of the compute)."""
    return ModelConfig(
        image_size=image_size,
        num_kp=10,
        kp_block_expansion=8,
        kp_num_blocks=3,
        kp_max_features=32,
        unet_block_expansion=8,
        unet_num_blocks=3,
        unet_max_features=32,
        attn_dim=16,
        value_dim=16,
        num_extra_kv=8,
        residual_hidden=16,
        decoder_res_blocks=2,
        decoder_channels=(16, 8),
    )


@dataclass
class LossWeights:
    """Loss weights (FOMM's vox-adv config where it applies)."""

    perceptual: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0, 10.0)  # VGG16 relu1_2..relu5_3
    perceptual_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    l1: float = 1.0
    equivariance: float = 10.0
    strength_equivariance: float = 1.0
    separation: float = 10.0  # keypoint repulsion, against collapse into one cluster
    separation_sigma: float = 0.05
    gan: float = 1.0
    feature_matching: float = 10.0
    # L1 of the source warped by the attention alone (source_warp) against the driving frame:
    # an auxiliary loss on the implicit flow where the blend mask does not use it yet, as
    # TPSMM's warp loss (section 3.3, eq. 13) constrains its optical flow.
    warp: float = 0.0
    # L1 of the images averaged over 8x8 blocks: colour and exposure fidelity (a global drift
    # in brightness or contrast costs little perceptual loss and much PSNR).
    lowpass: float = 0.0
    # Never worse than the frozen keyframe: the part of the prediction's error that exceeds
    # source 0's own (shown unwarped), in 4x4 block means of the L1 error, summed where it
    # exceeds. Zero where the output already beats a frozen frame, so it acts on frames close
    # to their keyframe (identity and near pairs), where copying the keyframe's pixels is the
    # floor the codec must not fall below (issue 16; codec.losses.floor_loss).
    floor: float = 0.0
    # LPIPS(alex) (codec.perceptual.LPIPS, Zhang et al. 2018) of the prediction against the
    # driving frame: the perceptual distance the codec is scored on, beside the VGG pyramid
    # (a learned weighting of AlexNet features, which the VGG loss does not see). Scored on
    # held-out people, with LPIPS(vgg) and DISTS beside it to show how much of a gain is only
    # the trained metric's (results/training/run25/README.md).
    lpips: float = 0.0


# Switches of earlier versions, each now fixed at the value given here: the model is the
# shipped variant, with no branch that no shipped weights take (docs/model.md, "Where this
# differs from the paper", items 1, 2, 5-8). A stored config or a ``--model`` override may
# still name one, but only with this value; weights trained with another would not fit.
RETIRED_SWITCHES = {
    "motion_prior": True,
    "kp_offsets": False,
    "residual_query": False,
    "source_patches": False,
    "source_warp": True,
    "prior_warp": True,
}
# Refinements whose layers start as a no-op (codec.model.REFINEMENT_LAYERS): weights from
# before one (a stored config that does not name it, or names it off) load with those layers
# at their start and render as they did; training continues from there (codec.train,
# --init-from FILE), which is how the shipped weights grew them (results/training/run16).
ZERO_START_REFINEMENTS = ("source_warp", "prior_warp")


def read_stored_config(d: dict) -> tuple[ModelConfig, tuple[str, ...]]:
    """A stored config dict -> (the config, the ZERO_START_REFINEMENTS it predates).

    Raises ValueError for a field this version does not know, or a retired switch at a value
    the model no longer has (e.g. ``source_patches: true``, run4's weights)."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(d) - known - set(RETIRED_SWITCHES)
    if unknown:
        raise ValueError(f"unknown model config fields: {sorted(unknown)}")
    predates = tuple(f for f in ZERO_START_REFINEMENTS if not d.get(f, False))
    for name, fixed in RETIRED_SWITCHES.items():
        value = d.pop(name, fixed)
        if value != fixed and name not in predates:
            raise ValueError(
                f"{name}={value}: this version's model always has {name}={fixed} "
                "(docs/model.md, design items)"
            )
    if "decoder_channels" in d:
        d["decoder_channels"] = tuple(d["decoder_channels"])
    return ModelConfig(**d), predates


@dataclass
class TrainConfig:
    """Runtime options of one training run (saved next to each checkpoint)."""

    cache: str = ".cache/crops_train_256"
    val_cache: str = ".cache/crops_val_256"
    out: str = "runs/default"
    batch_size: int = 16  # per GPU
    lr: float = 2e-4
    lr_decay_steps: int = 0  # linear decay over the last this many steps before max_steps
    lr_final: float = 0.1  # the rate at max_steps, as a fraction of lr
    # linear ramp from 0 over the first this many steps of a run started with --init-from or
    # from scratch (fresh Adam moments at the full rate set validation back, docs/model.md)
    lr_warmup_steps: int = 0
    # validate and save best.safetensors from an exponential moving average of the generator's
    # weights with this decay per step (0: the raw weights)
    ema_decay: float = 0.0
    betas: tuple[float, float] = (0.5, 0.999)
    max_steps: int = 100_000
    max_minutes: float = 0.0  # stop after this much wall time (0: no limit)
    gan_start_step: int = 2000
    source_counts: tuple[int, ...] = (1, 1, 2, 3)  # sampled uniformly per step
    semantic_dropout: float = 0.5  # probability that a sample drops key regions
    aug_independent_affine: float = 0.08  # per-frame random shift/scale/rotation strength
    # identity-changing augmentation per example (codec.data.IdentityAugment; 0: off): the
    # log width/height stretch, the hue rotation in radians, the probability of a grey example,
    # the probability of a dim one
    aug_aspect: float = 0.0
    aug_hue: float = 0.0
    aug_grey: float = 0.0
    aug_dark: float = 0.0
    # codec pairs (codec.data.CodecPairs; 0: off): the probability that the driving frame is
    # source 0 itself, that it is up to pair_near_frames frames away under source 0's framing
    pair_identity: float = 0.0
    pair_near: float = 0.0
    pair_near_frames: int = 6
    # with a fresh discriminator (--init-from a weights file): the discriminator trains alone
    # for this many steps before its loss reaches the generator
    gan_warmup_steps: int = 0
    log_every: int = 50
    val_every: int = 1000
    # keep the validated weights of every validation as validated-STEP.safetensors (besides
    # best.safetensors, the best by LPIPS with 1 source), to weigh other steps afterwards
    keep_validated: bool = False
    ckpt_every: int = 1000
    val_frames_per_clip: int = 48
    seed: int = 0
    bf16: bool = True
    attention_backend: str = "auto"
    init_from: str = ""  # an exported run (codec.train.export_run) or a weights file to start from
    # with --init-from a weights file: a discriminator to start from (an exported run's
    # discriminator-*.safetensors) instead of a fresh one
    init_discriminator: str = ""
    weights: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
