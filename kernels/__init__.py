"""Attention kernels for implicit warping: Triton on CUDA, plain torch elsewhere."""

from kernels.reference import default_scale, warp_attention_reference

__all__ = ["default_scale", "warp_attention_reference"]
