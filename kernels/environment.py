"""What a timing ran on: the versions, the device and the load, recorded beside every benchmark
result (``iwcodec bench``, ``python -m benchmarks.attention``, ``benchmarks.render``,
``benchmarks.tune``)."""

from __future__ import annotations

import os
import platform
import time

import torch

from iwcodec.provenance import git_commit


def environment(device: torch.device | str) -> dict[str, object]:
    """torch, triton, CUDA and Python versions, the git commit, CPU count, torch threads, the
    1-minute load average, the date, and the device: its name (``cpu (machine, N threads)`` on a
    CPU), compute capability and SM count (None on a CPU)."""
    device = torch.device(device)
    info: dict[str, object] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
        )
    else:
        info.update(
            device=f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
            capability=None,
            sm_count=None,
        )
    return info


__all__ = ["environment"]
