"""Attention kernels for implicit warping: Triton on CUDA, plain torch elsewhere.

``warp_attention`` is the entry point (see ``kernels/dispatch.py`` for the dispatch rules
and ``docs/kernels.md`` for the algorithm); ``warp_attention_reference`` is the contract.
Importing the package registers the custom op ``torch.ops.iwcodec.warp_attention``
(``kernels/ops.py``) that ``torch.compile`` sees instead of the Triton launcher.
"""

from kernels import ops  # registers torch.ops.iwcodec.warp_attention (torch.compile)
from kernels.dispatch import BACKENDS, backends, warp_attention, warp_attention_triton
from kernels.reference import default_scale, warp_attention_reference

__all__ = [
    "BACKENDS",
    "backends",
    "default_scale",
    "ops",
    "warp_attention",
    "warp_attention_reference",
    "warp_attention_triton",
]
