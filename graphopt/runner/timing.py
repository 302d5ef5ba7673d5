"""Timing and memory helpers: device sync, timed calls, per-process peak memory."""
from __future__ import annotations

import resource
import statistics
import sys
import time

import torch


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """-> (result, seconds), with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def median(values: list[float]) -> float:
    assert values, "no timings"
    return float(statistics.median(values))


def reset_peak_memory(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """CUDA: max allocated by torch on the device. CPU: this process's peak resident set size."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
