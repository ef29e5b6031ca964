"""Pinned launches of the fused attention forward (data; see kernels/pinned.py).

Written by ``python -m benchmarks.tune --write-table``; change it by rerunning that on
the GPU the target names, not by hand."""

import json

PROVENANCE = json.loads(
    """
{
 "command": "python -m benchmarks.tune --processes 5",
 "date": "2026-12-04",
 "device": "NVIDIA H200",
 "git_commit": "a608474ade9332f2d75e7e3afc2af2ae54444207",
 "rule": "lowest median of 5 fresh processes",
 "torch": "2.11.0+cu130",
 "triton": "3.6.0"
}
"""
)

ENTRIES = json.loads(
    """
[
{"target": "sm_90", "lq": 4096, "lk": 4496, "d": 128, "dv": 128, "dp": 3, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 4, "median_ms": 0.18302, "spread": 0.0059},
{"target": "sm_90", "lq": 4096, "lk": 4496, "d": 128, "dv": 3, "dp": 3, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3, "num_splits": 4, "median_ms": 0.12358, "spread": 0.2302},
{"target": "sm_90", "lq": 4096, "lk": 8592, "d": 128, "dv": 128, "dp": 3, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 4, "median_ms": 0.32474, "spread": 0.0027},
{"target": "sm_90", "lq": 4096, "lk": 8592, "d": 128, "dv": 6, "dp": 6, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 4, "median_ms": 0.21568, "spread": 0.0059},
{"target": "sm_90", "lq": 4096, "lk": 12688, "d": 128, "dv": 128, "dp": 3, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 4, "median_ms": 0.4657, "spread": 0.0029},
{"target": "sm_90", "lq": 4096, "lk": 12688, "d": 128, "dv": 9, "dp": 9, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 4, "median_ms": 0.31014, "spread": 0.002},
{"target": "sm_90", "lq": 16384, "lk": 16784, "d": 128, "dv": 128, "dp": 3, "dtype": "float32", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 1, "median_ms": 2.24907, "spread": 0.0037},
{"target": "sm_90", "lq": 4096, "lk": 4496, "d": 128, "dv": 128, "dp": 3, "dtype": "bfloat16", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 8, "median_ms": 0.11442, "spread": 0.9066},
{"target": "sm_90", "lq": 4096, "lk": 4496, "d": 128, "dv": 3, "dp": 3, "dtype": "bfloat16", "block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2, "num_splits": 4, "median_ms": 0.11435, "spread": 0.2947},
{"target": "sm_90", "lq": 4096, "lk": 8592, "d": 128, "dv": 128, "dp": 3, "dtype": "bfloat16", "block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 3, "num_splits": 8, "median_ms": 0.13616, "spread": 0.855},
{"target": "sm_90", "lq": 4096, "lk": 8592, "d": 128, "dv": 6, "dp": 6, "dtype": "bfloat16", "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2, "num_splits": 4, "median_ms": 0.11706, "spread": 1.5786},
{"target": "sm_90", "lq": 4096, "lk": 12688, "d": 128, "dv": 128, "dp": 3, "dtype": "bfloat16", "block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2, "num_splits": 4, "median_ms": 0.1216, "spread": 1.5636},
{"target": "sm_90", "lq": 4096, "lk": 12688, "d": 128, "dv": 9, "dp": 9, "dtype": "bfloat16", "block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2, "num_splits": 4, "median_ms": 0.11902, "spread": 1.5645},
{"target": "sm_90", "lq": 16384, "lk": 16784, "d": 128, "dv": 128, "dp": 3, "dtype": "bfloat16", "block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2, "num_splits": 1, "median_ms": 0.54251, "spread": 0.0045}
]
"""
)
