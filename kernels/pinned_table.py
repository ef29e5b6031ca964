"""Pinned launches of the fused attention forward (data; see kernels/pinned.py).

Written by ``python -m benchmarks.tune --write-table``; change it by rerunning that on
the GPU the target names, not by hand."""

import json

PROVENANCE = json.loads(
    """
{
 "note": "empty until the first tuning run on an H200 (benchmarks/gpu_visit.sh): every shape is autotuned as before"
}
"""
)

ENTRIES = json.loads(
    """
[

]
"""
)
