"""Training of the implicit-warping model (paper section 3, supplementary D).

Run on one or more GPUs with torchrun (data parallel, one process per GPU):

    torchrun --nproc_per_node=4 -m codec.train --cache CROPS --val-cache VAL_CROPS --out runs/r1

or ``iwcodec train ...`` on one device. Resumes from ``OUT/last.pt`` when it exists. Losses
(see codec/losses.py and codec/perceptual.py): multi-scale VGG16 perceptual + L1, keypoint
equivariance under random affine+TPS warps, keypoint separation, strength equivariance, and
after ``gan_start_step`` a multi-scale patch GAN (hinge) with feature matching. Training uses
1..3 sources per example, semantic dropout of key regions, bf16 autocast.

Writes to OUT: ``log.jsonl`` (losses, keypoint spread, throughput; validation metrics),
``last.pt`` (resumable checkpoint, loaded with ``weights_only=True``), ``best.safetensors``
(the best validation LPIPS so far), ``config.json``, ``curves.png`` and ``samples.png``.
With ``--ema-decay`` validation, ``best.safetensors`` and the exported ``ema.safetensors`` use
an exponential moving average of the generator's weights (Polyak averaging; the StyleGAN and
BigGAN generators are evaluated the same way), which trains on unchanged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from codec.config import (
    RETIRED_SWITCHES,
    LossWeights,
    ModelConfig,
    TrainConfig,
    read_stored_config,
    tiny_config,
)
from codec.data import (
    Clip,
    CodecPairs,
    FrameBank,
    IdentityAugment,
    load_crop_cache,
    semantic_dropout_bias,
)
from codec.inference import reconstruct, self_reconstruct, to_images
from codec.losses import (
    MultiScaleDiscriminator,
    RandomWarp,
    discriminator_hinge_loss,
    equivariance_loss,
    feature_matching_loss,
    floor_loss,
    generator_gan_loss,
    keypoint_spread,
    lowpass_l1,
    separation_loss,
)
from codec.model import ImplicitWarpingModel, count_parameters
from codec.perceptual import LPIPS, PerceptualLoss, PerceptualLossConfig
from codec.weights import save_weights
from iwcodec.errors import InputError, IWCodecError, ModelMismatchError, UsageError


# -- distributed plumbing -------------------------------------------------------------------------
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclasses.dataclass
class Batch:
    sources: torch.Tensor  # (B, N, 3, S, S)
    driving: torch.Tensor  # (B, 3, S, S)
    key_bias: torch.Tensor | None  # (B, N*S'*S') semantic dropout
    warp: RandomWarp  # the equivariance loss's random warp
    warped: torch.Tensor  # (B, 3, S, S) the driving frames under ``warp``


def setup_distributed() -> Dist:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        local = int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
            device = torch.device("cuda", local)
        else:  # CPU processes (tests of the data-parallel path)
            dist.init_process_group("gloo")
            device = torch.device("cpu")
        return Dist(dist.get_rank(), dist.get_world_size(), device)
    return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world
    return x


# -- the training state ---------------------------------------------------------------------------
class Trainer:
    def __init__(
        self,
        mc: ModelConfig,
        tc: TrainConfig,
        d: Dist,
        train_clips: list[Clip],
        val_clips: list[Clip] | None,
    ):
        self.mc, self.tc, self.d = mc, tc, d
        dev = d.device
        torch.manual_seed(tc.seed)
        self.model = ImplicitWarpingModel(mc, attention_backend=tc.attention_backend).to(dev)
        self.disc = MultiScaleDiscriminator().to(dev)
        self.g_opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, betas=tc.betas)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=tc.lr, betas=tc.betas)
        w = tc.weights
        self.perceptual = PerceptualLoss(
            PerceptualLossConfig(
                n_scales=len(w.perceptual_scales), layer_weights=tuple(w.perceptual), inputs="[0,1]"
            )
        ).to(dev)
        # LPIPS(alex): the validation metric (main process) and, with weights.lpips, a loss
        self.lpips = None
        if w.lpips > 0 or (d.main and val_clips):
            self.lpips = LPIPS("alex", inputs="[0,1]").to(dev)
        identity = IdentityAugment(tc.aug_aspect, tc.aug_hue, tc.aug_grey, tc.aug_dark)
        pairs = CodecPairs(tc.pair_identity, tc.pair_near, tc.pair_near_frames)
        self.bank = FrameBank(train_clips, dev, tc.aug_independent_affine, identity, pairs)
        self.val_clips = val_clips
        # The averaged generator (main process only: it validates and saves).
        self.ema = None
        if tc.ema_decay > 0 and d.main:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.step = 0
        self.init_step = 0  # the step this run started from (--init-from), for the warmup
        self.elapsed = 0.0  # training seconds over all sessions
        self.best_lpips = math.inf
        self.out = Path(tc.out)
        if d.world > 1:
            ids = [dev.index] if dev.type == "cuda" else None
            self.g = DDP(self.model, device_ids=ids)
            self.dd = DDP(self.disc, device_ids=ids, broadcast_buffers=False)
        else:
            self.g, self.dd = self.model, self.disc

    # checkpoints ------------------------------------------------------------------------------
    def save(self) -> None:
        if not self.d.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "best_lpips": self.best_lpips,
            "init_step": self.init_step,
            "model": self.model.state_dict(),
            "disc": self.disc.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            "model_config": self.mc.to_json(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        tmp = self.out / "last.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out / "last.pt")

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.d.device, weights_only=True)
        if _stored_config(state["model_config"], path) != self.mc:
            raise ModelMismatchError(
                f"{path} was trained with another model config; use a new --out"
            )
        self.model.load_state_dict(state["model"])
        self.disc.load_state_dict(state["disc"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.step, self.elapsed, self.best_lpips = (
            state["step"],
            state["elapsed"],
            state["best_lpips"],
        )
        self.init_step = state.get("init_step", 0)
        self.reset_ema(state.get("ema"))

    def load_init(self, path: Path) -> None:
        """Start from an exported run (a folder, see export_run) or from a weights file."""
        if path.is_file():
            self.load_weights_file(path)
        else:
            self.load_exported(path)
        self.init_step = self.step

    def reset_ema(self, state: dict | None = None) -> None:
        """The average restarts at ``state`` (a saved average) or at the current weights."""
        if self.ema is not None:
            self.ema.load_state_dict(state if state is not None else self.model.state_dict())

    @property
    def validated_model(self) -> ImplicitWarpingModel:
        """The weights validation scores and best.safetensors holds: the average with
        ``ema_decay``, else the raw ones."""
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, after each generator step."""
        if self.ema is None:
            return
        mine, theirs = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(mine, theirs, 1.0 - self.tc.ema_decay)
        for a, b in zip(self.ema.buffers(), self.model.buffers()):
            a.copy_(b)

    def load_weights_file(self, path: Path) -> None:
        """The generator from a weights file (codec.weights, e.g. the shipped weights, which
        fit through the device's upload limit where an exported run does not); the
        discriminator and both optimizers start fresh. Counters come from the file's metadata
        (``step``, ``elapsed``, ``val``) where it has them. A file from before a zero-start
        refinement (codec.config.ZERO_START_REFINEMENTS) grows it: those layers keep this
        run's start, so the model renders as the file's did."""
        from codec.weights import load_tensors, read_metadata, read_weights

        cfg, predates, state = read_weights(path)
        if cfg != self.mc:
            raise ModelMismatchError(f"{path} holds another model config than the one requested")
        load_tensors(self.model, state, predates, path)
        extra = json.loads(read_metadata(path).get("extra", "{}"))
        self.step = int(extra.get("step", 0))
        self.elapsed = float(extra.get("elapsed", 0.0))
        self.best_lpips = float(extra.get("val", {}).get("lpips_1src", math.inf))
        self.reset_ema()

    def load_discriminator(self, path: Path) -> None:
        """The discriminator from one safetensors file (e.g. an exported run's bfloat16
        ``discriminator-0.safetensors``), to pair with a weights file: a fresh discriminator
        first has to catch up, and validation LPIPS rose for about 2,000 steps while it did
        (run2, docs/model.md)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise InputError(
                f"--init-discriminator {path}: not a readable safetensors file ({e})"
            ) from e
        mine = self.disc.state_dict()
        if state.keys() != mine.keys() or any(v.shape != mine[k].shape for k, v in state.items()):
            raise ModelMismatchError(
                f"--init-discriminator {path}: not this discriminator's tensors"
            )
        self.disc.load_state_dict({k: v.to(mine[k].dtype) for k, v in state.items()})

    def load_exported(self, directory: Path) -> None:
        """Weights and counters of an exported run (optimizers start fresh)."""
        state = _exported_state(directory)
        if _stored_config(state["model"], directory) != self.mc:
            raise ModelMismatchError(f"{directory} holds another model config")
        self.model.load_state_dict(load_shards(directory, "generator"))
        disc = load_shards(directory, "discriminator")
        self.disc.load_state_dict({k: v.float() for k, v in disc.items()})
        self.step, self.elapsed, self.best_lpips = (
            state["step"],
            state["elapsed"],
            state["best_lpips"],
        )
        if self.ema is not None and (directory / "ema.safetensors").exists():
            from codec.weights import load_model

            self.reset_ema(load_model(directory / "ema.safetensors").float().state_dict())
        else:
            self.reset_ema()

    # one step ---------------------------------------------------------------------------------
    def sample_batch(self, step: int) -> Batch:
        """The examples of one step: deterministic in (seed, step, rank)."""
        tc, dev = self.tc, self.d.device
        # The number of sources must agree across ranks (DDP): draw it from the step number.
        pick = np.random.default_rng(tc.seed * 1_000_003 + step).integers(len(tc.source_counts))
        n_src = tc.source_counts[pick]
        gen = torch.Generator(device=dev)
        gen.manual_seed(tc.seed * 7919 + step * 104729 + self.d.rank)
        sources, driving, landmarks = self.bank.sample(tc.batch_size, n_src, gen)
        key_bias = semantic_dropout_bias(
            tc.batch_size, n_src, self.mc.feature_size, tc.semantic_dropout, gen, dev, landmarks
        )
        warp = RandomWarp(tc.batch_size, device=dev, generator=gen)
        return Batch(sources, driving, key_bias, warp, warp.warp_image(driving))

    def _autocast(self):
        dev = self.d.device
        return torch.autocast(
            dev.type, dtype=torch.bfloat16, enabled=self.tc.bf16 and dev.type == "cuda"
        )

    def generator_losses(self, batch: Batch, use_gan: bool) -> tuple[dict[str, torch.Tensor], dict]:
        """Weighted generator losses of one batch (call inside autocast)."""
        w = self.tc.weights
        out = self.g(batch.sources, batch.driving, batch.key_bias, extra_detect=batch.warped)
        pred = out["prediction"]
        losses = {
            "perceptual": self.perceptual(pred, batch.driving),
            "l1": w.l1 * (pred.float() - batch.driving).abs().mean(),
            "equivariance": w.equivariance
            * equivariance_loss(out["kp_driving"], out["kp_extra"], batch.warp),
            "strength_eq": w.strength_equivariance
            * (out["strength_driving"] - out["strength_extra"]).abs().mean(),
            "separation": w.separation * separation_loss(out["kp_driving"], w.separation_sigma),
        }
        if w.warp > 0:
            warped = out["warped_source"].float()  # (B, 3, H, W)
            losses["warp"] = w.warp * (warped - batch.driving).abs().mean()
        if w.lowpass > 0:
            losses["lowpass"] = w.lowpass * lowpass_l1(pred.float(), batch.driving)
        if w.floor > 0:
            frozen = batch.sources[:, 0]  # (B, 3, H, W) the keyframe shown as it is
            losses["floor"] = w.floor * floor_loss(pred.float(), batch.driving, frozen)
        if w.lpips > 0:
            losses["lpips"] = w.lpips * self.lpips(pred.float(), batch.driving).mean()
        if use_gan:
            # Through the unwrapped discriminator with its weights frozen: the generator step
            # must neither compute nor all-reduce discriminator gradients.
            self.disc.requires_grad_(False)
            fake = self.disc(pred)
            with torch.no_grad():
                real = self.disc(batch.driving)
            losses["gan"] = w.gan * generator_gan_loss(fake)
            losses["feature_matching"] = w.feature_matching * feature_matching_loss(real, fake)
            self.disc.requires_grad_(True)
        return losses, out

    def learning_rate(self) -> float:
        """Constant ``lr``, then (with ``lr_decay_steps``) linear to ``lr * lr_final`` over the
        last ``lr_decay_steps`` before ``max_steps``; with ``lr_warmup_steps`` it first ramps
        linearly up from the run's first step. A function of the step alone, so every rank
        applies the same rate."""
        tc = self.tc
        lr = tc.lr
        if tc.lr_decay_steps > 0:
            start = tc.max_steps - tc.lr_decay_steps
            frac = min(max((self.step - start) / tc.lr_decay_steps, 0.0), 1.0)
            lr *= 1.0 - frac * (1.0 - tc.lr_final)
        if tc.lr_warmup_steps > 0:
            lr *= min((self.step - self.init_step + 1) / tc.lr_warmup_steps, 1.0)
        return lr

    def optimize(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One generator (and, once the GAN is on, discriminator) update."""
        use_gan = self.step >= self.tc.gan_start_step and self.tc.weights.gan > 0
        # a fresh discriminator first learns alone (gan_warmup_steps from this run's start)
        gan_to_g = use_gan and self.step - self.init_step >= self.tc.gan_warmup_steps
        lr = self.learning_rate()
        for group in (*self.g_opt.param_groups, *self.d_opt.param_groups):
            group["lr"] = lr
        with self._autocast():
            losses, out = self.generator_losses(batch, gan_to_g)
        g_loss = sum(losses.values())
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()
        self.update_ema()
        if use_gan:
            with self._autocast():
                pred = out["prediction"].detach()
                d_loss = discriminator_hinge_loss(self.dd(batch.driving), self.dd(pred))
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            losses["disc"] = d_loss
        stats = {k: v.detach().float() for k, v in losses.items()}
        stats["total"] = g_loss.detach().float()
        stats["kp_spread"] = keypoint_spread(out["kp_driving"].detach().float())
        stats["strength_mean"] = out["strength_driving"].detach().float().mean()
        stats["n_src"] = torch.tensor(float(batch.sources.shape[1]), device=self.d.device)
        stats["lr"] = torch.tensor(lr, device=self.d.device)
        stats["warp_sharpness"] = self.model.warp_log_sharpness.detach().float().exp()
        return stats

    def train_step(self) -> dict[str, torch.Tensor]:
        stats = self.optimize(self.sample_batch(self.step))
        self.step += 1
        return stats

    # validation -------------------------------------------------------------------------------
    def validate(self) -> dict:
        """:func:`validate` of ``validated_model`` on the val clips."""
        model = self.validated_model
        model.eval()
        try:
            return validate(
                model, self.val_clips, self.lpips, self.tc.val_frames_per_clip, self._autocast
            )
        finally:
            self.model.train()

    # main loop --------------------------------------------------------------------------------
    def run(self) -> None:
        tc, d = self.tc, self.d
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(
                json.dumps(
                    {"model": self.mc.to_dict(), "train": tc.to_dict(), "world": d.world}, indent=1
                )
            )
            print(
                f"model {count_parameters(self.model) / 1e6:.2f}M params, {len(self.bank)} training frames, world {d.world}",
                flush=True,
            )
        log = open(self.out / "log.jsonl", "a") if d.main else None
        t_start = time.time()
        elapsed0 = self.elapsed
        window, t_win, examples = [], time.time(), 0
        while self.step < tc.max_steps:
            stats = self.train_step()
            examples += tc.batch_size
            window.append(stats)
            self.elapsed = elapsed0 + time.time() - t_start
            done = self.step >= tc.max_steps or (
                tc.max_minutes > 0
                and (time.time() - t_start) > tc.max_minutes * 60
                and (d.world == 1 or self.step % 10 == 0)
            )
            if d.world > 1 and (self.step % 10 == 0 or self.step >= tc.max_steps):
                # All ranks vote at the same steps, so all stop together (a rank that left alone
                # would leave the others waiting in a collective); not every step: .item() syncs.
                flag = torch.tensor(float(done), device=d.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                done = bool(flag.item())
            if self.step % tc.log_every == 0 or done:
                if d.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.time() - t_win
                keys = window[-1].keys()
                mean = {
                    k: all_mean(torch.stack([s[k] for s in window if k in s]).mean(), d).item()
                    for k in keys
                }
                rec = {
                    "step": self.step,
                    "elapsed_s": round(self.elapsed, 1),
                    "examples_per_s_per_gpu": round(examples / dt, 1),
                    **{k: round(v, 5) for k, v in mean.items()},
                }
                if d.main:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    print(json.dumps(rec), flush=True)
                window, t_win, examples = [], time.time(), 0
            if (self.step % tc.val_every == 0 or done) and self.val_clips and d.main:
                val = self.validate()
                rec = {
                    "step": self.step,
                    "elapsed_s": round(self.elapsed, 1),
                    "val": val["mean"],
                    "val_clips": val["clips"],
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps({"step": self.step, "val": val["mean"]}), flush=True)
                extra = {"step": self.step, "elapsed": self.elapsed, "val": val["mean"]}
                if val["mean"]["lpips_1src"] < self.best_lpips:
                    self.best_lpips = val["mean"]["lpips_1src"]
                    save_weights(self.validated_model, self.out / "best.safetensors", extra=extra)
                if tc.keep_validated:
                    name = f"validated-{self.step}.safetensors"
                    save_weights(self.validated_model, self.out / name, extra=extra)
                save_samples(val["samples"], self.out / "samples.png")
                plot_curves(self.out / "log.jsonl", self.out / "curves.png")
            if self.step % tc.ckpt_every == 0 or done:
                self.save()
            if done:
                break
        if log:
            log.close()


@torch.no_grad()
def validate(model, clips: list[Clip], lpips, frames_per_clip: int, autocast) -> dict:
    """Rebuild evenly spaced frames of each val clip from 1 and 2 sources (the first frame;
    first + middle: :func:`codec.inference.reconstruct`) and compare with the frozen baseline
    (the nearest source shown for every frame), and rebuild some of them from themselves (the
    ceiling): PSNR and LPIPS(alex) per clip and means over clips. ``autocast``: a callable
    giving the context to render in.
    -> {"mean": {...}, "clips": {name: {...}}, "samples": [...]}"""
    device = next(model.parameters()).device
    per_clip, samples = {}, []
    for clip in clips:
        frames = np.asarray(clip.frames)  # (T, S, S, 3) uint8
        t = len(frames)
        idx = torch.linspace(0, t - 1, min(frames_per_clip, t)).round().long().numpy()
        target = to_images(frames[idx], device)  # (M, 3, S, S)
        res = {}
        for n in (1, 2):
            with autocast():
                rec = reconstruct(model, frames, n, idx)
            frozen = to_images(frames[rec.frozen], device)
            res[f"psnr_{n}src"] = _psnr(rec.images, target)
            res[f"lpips_{n}src"] = lpips(rec.images, target).mean().item()
            res[f"frozen_psnr_{n}src"] = _psnr(frozen, target)
            res[f"frozen_lpips_{n}src"] = lpips(frozen, target).mean().item()
            if n == 1 and len(samples) < 4:
                j = len(idx) * 2 // 3
                first = to_images(frames[:1], device)[0]
                kp = (rec.kp_sources[0], rec.kp_targets[j])
                samples.append((clip.name, first, target[j], rec.images[j], *kp))
        # the ceiling: frames rebuilt from themselves (driving = source)
        step = max(1, len(idx) // 8)
        with autocast():
            pred = self_reconstruct(model, frames, idx[::step])
        res["self_psnr"] = _psnr(pred, target[::step])
        res["self_lpips"] = lpips(pred, target[::step]).mean().item()
        per_clip[clip.name] = res
    keys = next(iter(per_clip.values()))
    mean = {k: float(np.mean([r[k] for r in per_clip.values()])) for k in keys}
    mean["self_psnr_min"] = float(min(r["self_psnr"] for r in per_clip.values()))
    return {"mean": mean, "clips": per_clip, "samples": samples}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


# -- moving a run between machines ----------------------------------------------------------------
SHARD_BYTES = 15 * 2**20  # the GPU machine returns files of at most 16 MiB


def save_shards(tensors: dict[str, torch.Tensor], directory: Path, name: str) -> list[Path]:
    """Write ``tensors`` as ``name-0.safetensors``, ``name-1...`` of at most SHARD_BYTES each."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key] = t.detach().cpu().contiguous()
        size += nbytes
    shards.append(current)
    paths = []
    for i, shard in enumerate(shards):
        paths.append(directory / f"{name}-{i}.safetensors")
        save_file(shard, str(paths[-1]))
    return paths


def load_shards(directory: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for path in sorted(directory.glob(f"{name}-*.safetensors")):
        state.update(load_file(str(path)))
    if not state:
        raise InputError(f"no {name}-*.safetensors in {directory}")
    return state


def export_run(run_dir: str | Path, out_dir: str | Path) -> None:
    """Copy what continuing a run elsewhere needs, in files the GPU machine can return (8 files,
    16 MiB each): the generator in float32 shards, the discriminator in bfloat16, counters
    and configs, the best weights, the averaged weights (``ema.safetensors``, with
    ``ema_decay``), the log and the samples (``plot_curves`` redraws the curves from the log).
    Optimizer moments stay behind (they would double the size); a continued run starts them
    afresh."""
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    save_shards(state["model"], out_dir, "generator")
    save_shards(
        {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state["disc"].items()},
        out_dir,
        "discriminator",
    )
    config = json.loads((run_dir / "config.json").read_text())
    meta = {k: state[k] for k in ("step", "elapsed", "best_lpips")}
    (out_dir / "state.json").write_text(json.dumps({**meta, **config}, indent=1))
    if "ema" in state:
        ema = ImplicitWarpingModel(ModelConfig.from_dict(json.loads(state["model_config"])))
        ema.load_state_dict(state["ema"])
        save_weights(
            ema,
            out_dir / "ema.safetensors",
            extra={"step": meta["step"], "elapsed": meta["elapsed"]},
        )
    for name in ("best.safetensors", "log.jsonl", "samples.png"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out_dir / name)


# -- pictures -------------------------------------------------------------------------------------
def _draw_kp(ax, kp, size):
    xy = (kp.numpy() + 1) / 2 * size - 0.5
    ax.scatter(
        xy[:, 0],
        xy[:, 1],
        c=np.arange(len(xy)),
        cmap="tab20",
        s=12,
        edgecolors="white",
        linewidths=0.5,
    )


def save_samples(samples, path: Path) -> None:
    """Rows: source (with keypoints), driving (with keypoints), reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        return
    fig, axes = plt.subplots(3, len(samples), figsize=(3 * len(samples), 9), squeeze=False)
    for c, (name, src, drv, pred, kp_s, kp_d) in enumerate(samples):
        size = src.shape[-1]
        for r, (img, kp, title) in enumerate(
            [(src, kp_s, "source"), (drv, kp_d, "driving"), (pred, None, "reconstruction")]
        ):
            ax = axes[r, c]
            ax.imshow(img.permute(1, 2, 0).float().cpu().clamp(0, 1).numpy())
            if kp is not None:
                _draw_kp(ax, kp.cpu(), size)
            ax.set_title(f"{title}\n{name[:28]}" if r == 0 else title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(log_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in open(log_path):
        rec = json.loads(line)
        (val if "val" in rec else train).append(rec)
    if not train:
        return
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    steps = [r["step"] for r in train]
    losses = (
        "perceptual",
        "lpips",
        "l1",
        "warp",
        "equivariance",
        "separation",
        "gan",
        "feature_matching",
    )
    for k in (*losses, "disc"):
        ys = [r.get(k, np.nan) for r in train]
        if not all(np.isnan(ys)):
            axes[0].plot(steps, ys, label=k)
    axes[0].set_yscale("log")
    axes[0].set_title("training losses")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r["kp_spread"] for r in train], label="keypoint spread")
    axes[1].plot(steps, [r["strength_mean"] for r in train], label="mean strength")
    axes[1].set_title("keypoints")
    axes[1].legend(fontsize=7)
    if val:
        vs = [r["step"] for r in val]
        for n in (1, 2):
            axes[2].plot(
                vs, [r["val"][f"lpips_{n}src"] for r in val], marker="o", label=f"model, {n} src"
            )
            axes[2].plot(
                vs,
                [r["val"][f"frozen_lpips_{n}src"] for r in val],
                ls="--",
                label=f"frozen, {n} src",
            )
            axes[3].plot(
                vs, [r["val"][f"psnr_{n}src"] for r in val], marker="o", label=f"model, {n} src"
            )
            axes[3].plot(
                vs,
                [r["val"][f"frozen_psnr_{n}src"] for r in val],
                ls="--",
                label=f"frozen, {n} src",
            )
        axes[2].set_title("val LPIPS (alex)")
        axes[3].set_title("val PSNR (dB)")
        axes[2].legend(fontsize=7)
        axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- entry point ----------------------------------------------------------------------------------
def _tuple_of(kind: type):
    return lambda s: tuple(kind(x) for x in s.split(","))


#: The loss weights that have a ``--NAME-weight`` flag (fields of LossWeights), with their help.
LOSS_WEIGHT_FLAGS: dict[str, str | None] = {
    "gan": None,
    "l1": None,
    "warp": "L1 of the source warped by the attention alone against the driving frame",
    "lowpass": "L1 of 8x8 block means (colour and exposure fidelity)",
    "lpips": "LPIPS(alex) of the prediction against the driving frame",
    "floor": "the prediction's error in excess of the frozen source 0's "
    "(never worse than a frozen keyframe)",
}


def parse_args(argv: list[str] | None) -> tuple[ModelConfig, TrainConfig]:
    p = argparse.ArgumentParser(
        prog="iwcodec train", description="Train the implicit-warping model."
    )
    tc = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "weights":
            continue
        default = getattr(tc, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default)
        elif isinstance(default, tuple):
            p.add_argument(
                flag,
                type=_tuple_of(type(default[0])),
                default=default,
            )
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--tiny", action="store_true", help="a tiny model (CPU tests)")
    p.add_argument(
        "--model",
        default="",
        help="model config overrides, e.g. 'num_kp=16,attn_dim=64' (saved with the weights)",
    )
    for name, text in LOSS_WEIGHT_FLAGS.items():
        p.add_argument(
            f"--{name}-weight", type=float, default=getattr(LossWeights, name), help=text
        )
    args = vars(p.parse_args(argv))
    tiny = args.pop("tiny")
    overrides = args.pop("model")
    weights = LossWeights(**{name: args.pop(f"{name}_weight") for name in LOSS_WEIGHT_FLAGS})
    if tiny:
        # CPU tests: the first three VGG blocks at two scales are enough to learn from.
        weights = dataclasses.replace(
            weights, perceptual=(10.0, 10.0, 10.0, 0.0, 0.0), perceptual_scales=(1.0, 0.5)
        )
    mc = tiny_config() if tiny else ModelConfig()
    if args["init_discriminator"] and not args["init_from"]:
        p.error("--init-discriminator goes with --init-from")
    if args["init_from"]:
        mc = _init_config(Path(args["init_from"]))
    mc = _override(mc, overrides)
    return mc, TrainConfig(**args, weights=weights)


def _init_config(path: Path) -> ModelConfig:
    """The model config of ``--init-from``: a weights file's, or an exported run's."""
    if path.is_file():
        from codec.weights import read_config

        return read_config(path)[0]
    return _stored_config(_exported_state(path)["model"], path)


def _exported_state(directory: Path) -> dict:
    """``state.json`` of an exported run (:func:`export_run`)."""
    try:
        return json.loads((directory / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{directory}: not an exported run or a weights file ({e})") from None


def _stored_config(stored: str | dict, where: Path) -> ModelConfig:
    """A model config stored in a checkpoint or an exported run (a dict or its JSON)."""
    try:
        d = json.loads(stored) if isinstance(stored, str) else stored
        return read_stored_config(d)[0]
    except (ValueError, TypeError) as e:
        raise ModelMismatchError(f"{where}: invalid model config ({e})") from None


def _override(mc: ModelConfig, text: str) -> ModelConfig:
    """``--model key=value,...``: fields of the model config (a list's items split by ``/``).
    A retired switch (codec.config.RETIRED_SWITCHES) is accepted at the value the model now
    always has, so earlier recipes (``--model prior_warp=true``) still run."""
    if not text:
        return mc
    d = mc.to_dict()
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key in RETIRED_SWITCHES:
            if _parse_bool(value) != RETIRED_SWITCHES[key]:
                raise UsageError(
                    f"--model {item}: the model always has {key}={RETIRED_SWITCHES[key]} now"
                )
            continue
        if key not in d:
            raise UsageError(f"--model: unknown field {key!r}")
        old = d[key]
        try:
            if isinstance(old, bool):
                d[key] = _parse_bool(value)
            elif isinstance(old, list):
                d[key] = [type(old[0])(x) for x in value.split("/")]
            else:
                d[key] = type(old)(value)
        except ValueError as e:
            raise UsageError(f"--model {item}: {e}") from None
    try:
        return ModelConfig.from_dict(d)
    except ValueError as e:
        raise UsageError(f"--model {text}: {e}") from None


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    """The command line (``iwcodec train``, ``python -m codec.train``, torchrun): the
    project's errors become one line "iwcodec: error: ..." and exit status 2, as in every
    iwcodec command (docs/usage.md, "Errors and exit status")."""
    try:
        train(*parse_args(argv))
    except IWCodecError as e:
        print(f"iwcodec: error: {e}", file=sys.stderr)
        return 2
    return 0


def train(mc: ModelConfig, tc: TrainConfig) -> None:
    """One training run on this process's device (torchrun: one process per GPU): resumes from
    ``OUT/last.pt``, else starts from ``--init-from`` or from scratch."""
    d = setup_distributed()
    train_clips = load_crop_cache(tc.cache)
    val_clips = (
        load_crop_cache(tc.val_cache) if tc.val_cache and Path(tc.val_cache).exists() else None
    )
    if mc.image_size != train_clips[0].frames.shape[1]:
        raise InputError(
            f"crop cache holds {train_clips[0].frames.shape[1]} px crops, the model wants {mc.image_size}"
        )
    trainer = Trainer(mc, tc, d, train_clips, val_clips)
    ckpt = Path(tc.out) / "last.pt"
    if ckpt.exists():
        trainer.load(ckpt)
        if d.main:
            print(f"resumed from {ckpt} at step {trainer.step}", flush=True)
    elif tc.init_from:
        trainer.load_init(Path(tc.init_from))
        if tc.init_discriminator:
            trainer.load_discriminator(Path(tc.init_discriminator))
        if d.main:
            print(f"continuing from {tc.init_from} at step {trainer.step}", flush=True)
    trainer.run()
    if d.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
