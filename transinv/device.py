"""Where a trial computes: the torch device, picked once from availability, and the number of
intra-op threads (a Ray trial's CPU share). No CUDA-only paths live anywhere else."""

from __future__ import annotations

import os

import torch


def select_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible (Ray hides GPUs from trials that asked for none)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible to this process")
    return torch.device(name)


def configure_threads(threads: int) -> int:
    """Intra-op threads: the configured number, else the CPUs this process may run on (a Ray
    trial's CPU share, a container's quota)."""
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n
