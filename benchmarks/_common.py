"""What several benchmarks use: this host's figures, whole commands timed in fresh processes, graphopt's
optimised scoring graph, and the kernel benchmarks' packed layout and timer. A benchmark imports these
from here, never from another benchmark; its markdown tables go through
graphopt.runner.report_table.markdown_table."""
from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import graphopt
from graphopt.scoring import ScoreModule, Scorer

# ---------------------------------------------------------------------------------------- this host

# dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name()
GPU_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("V100", 125.0),
                   ("L40S", 362.0), ("A10", 125.0)]


def peak_tflops(device: str, dtype: torch.dtype, given: float | None) -> tuple[float, str]:
    if given:
        return given, "given"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_PEAK_TFLOPS:
            if key in name:
                return (tflops if dtype != torch.float32 else tflops / 2), f"{name} datasheet"
        raise SystemExit(f"unknown GPU {name!r}: give its dense peak with --peak-tflops")
    a = torch.randn(2048, 2048, dtype=dtype)
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e12, "2048^3 matmul measured here"


def host_matmul_gflops() -> dict:
    """fp32 and bf16 2048^3 matmul GFLOP/s on this CPU, as peak_tflops measures it."""
    return {f"matmul_gflops_{name}": 1e3 * peak_tflops("cpu", dtype, None)[0]
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def host() -> dict:
    """CPU model, threads, torch version and the host's 2048^3 matmul rates (peak_tflops)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, **host_matmul_gflops()}


def layer_param_counts(args) -> list[int]:
    """Weights of one layer's matmuls (a graphopt ModelArgs): q, k, v, o, gate, up, down."""
    d, hd, kv = args.dim, args.head_dim, args.n_kv_heads
    return [d * d, d * kv * hd, d * kv * hd, d * d, d * args.hidden_dim, d * args.hidden_dim, args.hidden_dim * d]


# ---------------------------------------------------------------- whole commands in fresh processes

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# Linux's peak resident set of a process (ru_maxrss) starts at the peak of the memory image it was forked
# from: a command forked straight from this benchmark process (GBs once it has loaded a model) would report
# at least this process's size. A small Python process forks the command instead and reports its own peak.
_TRAMPOLINE = """\
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
if os.WIFSIGNALED(status):  # end as the command ended
    if os.WTERMSIG(status) not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_timed(argv: list[str], env: dict, timeout: float | None) -> dict:
    """One command in a fresh process: {wall_s, rc, stdout, stderr, peak_rss_mb} (peak_rss_mb: the
    command's own peak resident set, from its rusage when it is reaped, forked from a small process)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".maxrss") as maxrss:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, maxrss.name, *argv], env=env, stdout=out,
                             stderr=err, text=True, start_new_session=True)
        timer = threading.Timer(timeout, os.killpg, (p.pid, signal.SIGKILL)) if timeout else None
        if timer is not None:
            timer.start()
        p.wait()
        wall = time.perf_counter() - t0
        timed_out = timer is not None and not timer.is_alive() and p.returncode != 0
        if timer is not None:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        kib = maxrss.read().strip()
    rc = "timeout" if timed_out else p.returncode
    if timed_out:
        stderr += f"\ntimed out after {timeout} s"
    return {"wall_s": wall, "rc": rc, "stdout": stdout, "stderr": stderr,
            "peak_rss_mb": int(kib) / 1024 if kib.isdigit() else float("nan")}


def cache_env(cache: Path) -> dict:
    return {**os.environ, **OFFLINE, "TORCHINDUCTOR_CACHE_DIR": str(cache), "GRAPHOPT_CACHE_DIR": str(cache),
            "HF_DATASETS_CACHE": str(cache / "hf_datasets")}


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# ------------------------------------------------------------------------------------ graphopt runs

def layout_batches(model, requests, layout: str, **options) -> list:
    """The batches the Scorer builds for `requests` in `layout` (a scoring strategy and its options), for a
    benchmark that times its own runnables on them."""
    return Scorer(model, None, layout=layout, layout_options=options).prepare(requests).batches


def optimised_graph(model, batches, pipeline, compiler: str):
    """graphopt.optimize(ScoreModule(model)) as `graphopt run` builds it: capture (dynamic shapes), the
    pipeline, the compiler (none | inductor | inductor-frozen), compiled dynamic (one compile for all
    shapes)."""
    t0 = time.perf_counter()
    fn = graphopt.optimize(ScoreModule(model), batches[0].model_inputs(), pipeline, compiler)
    return fn, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ kernels

def packed_layout(B: int, T: int, context: int, ending: int, n_endings: int = 4, device="cpu"):
    """doc_ids, seg_ids [B, T]: each row packs whole questions (context + n_endings endings) and pads the
    rest with doc -1, as shared-prefix scoring does."""
    doc = torch.full((B, T), -1, dtype=torch.long)
    seg = torch.zeros((B, T), dtype=torch.long)
    per_question = context + n_endings * ending
    assert per_question <= T, f"a question of {per_question} tokens does not fit a row of {T}"
    for b in range(B):
        for qi in range(T // per_question):
            start = qi * per_question
            doc[b, start:start + per_question] = qi
            for e in range(n_endings):
                s = start + context + e * ending
                seg[b, s:s + ending] = e + 1
    return doc.to(device), seg.to(device)


def time_ms(fn, device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warmup
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
