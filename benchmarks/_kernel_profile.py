"""Where a scoring run's time goes, by kind of kernel: one profiled call, a markdown table.

    rows, kernels, wall = kernel_table(lambda: score_requests(...), "cuda")
    print(markdown(rows, kernels, wall, top=12))

On CUDA the table counts GPU kernel time (self device time of each kernel) and adds the wall time no
kernel covered: launch gaps and host work the GPU waited for. On CPU it counts each op's self time;
inductor's C++ kernels show up inside "## Call CompiledFxGraph ##", so they land in "inductor fused".
"""
from __future__ import annotations

import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from graphopt.runner.report_table import markdown_table

# (category, lower-case substrings of a kernel or op name); the first category that matches wins, so
# "_linear_logprob_kernel" is logprob, not matmul, and "_prefix_attention_kernel" is attention
CATEGORIES = [
    ("attention", ("attention", "flash", "fmha", "sdpa")),
    ("logprob", ("logprob", "log_softmax", "logsumexp")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "aten::_int_mm",
                "aten::linear", "aten::matmul", "_linear_pointwise", "onednn", "triton_tem")),
    ("rms_norm", ("rms_norm",)),
    ("rope", ("rope",)),
    ("swiglu", ("swiglu", "silu")),
    ("inductor fused", ("triton_", "compiledfxgraph")),
    ("copy / index", ("copy", "cat", "memcpy", "memset", "contiguous", "clone", "index", "fill", "gather")),
    ("elementwise, unfused", ("elementwise", "aten::mul", "aten::add", "aten::sub", "aten::div", "aten::where",
                              "aten::neg", "aten::exp", "aten::pow", "aten::rsqrt", "aten::mean", "aten::sum")),
]
UNCOVERED = {"cuda": "no kernel running (launch gaps, host work)", "cpu": "outside ops (Python, dispatch)"}


def categorise(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def kernel_times(prof, cuda: bool) -> list[tuple[str, float, int]]:
    """(name, self seconds, calls) of every kernel (CUDA) or op (CPU) the profile saw, longest first."""
    want = DeviceType.CUDA if cuda else DeviceType.CPU
    out = []
    for e in prof.key_averages():
        if e.device_type != want:
            continue
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0:
            out.append((e.key, us / 1e6, e.count))
    return sorted(out, key=lambda r: -r[1])


def kernel_table(run, device: str) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]], float]:
    """Profile one `run()`: (per-category rows (category, seconds, calls) longest first, the per-kernel
    rows of kernel_times, wall seconds). The last category row is the time no kernel/op covered."""
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, acc_events=True) as prof:  # acc_events: no 'clears events' warning
        t0 = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernels = kernel_times(prof, cuda)
    by_cat: dict[str, list[float]] = {}
    for name, seconds, calls in kernels:
        acc = by_cat.setdefault(categorise(name), [0.0, 0])
        acc[0] += seconds
        acc[1] += calls
    rows = sorted(((c, s, n) for c, (s, n) in by_cat.items()), key=lambda r: -r[1])
    covered = sum(s for _, s, _ in rows)
    rows.append((UNCOVERED["cuda" if cuda else "cpu"], max(wall - covered, 0.0), 0))
    return rows, kernels, wall


def markdown(rows, kernels, wall: float, top: int = 12) -> str:
    """The category table, then the `top` longest kernels, as markdown."""
    by_kind = markdown_table(["kind", "s", "share of wall", "calls"],
                             [[c, f"{s:.4f}", f"{s / wall:.1%}", f"{n or ''}"] for c, s, n in rows],
                             [False, True, True, True], pad=False)
    longest = markdown_table(["kernel", "kind", "s", "calls"],
                             [[f"`{name[:90]}`", categorise(name), f"{s:.4f}", f"{n}"] for name, s, n in kernels[:top]],
                             [False, False, True, True], pad=False)
    return "\n".join([f"time by kind of kernel, one profiled call ({wall:.3f} s wall, profiler overhead included):",
                      "", by_kind, "", f"the {top} longest kernels:", "", longest])
