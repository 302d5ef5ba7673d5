"""Triton kernels vs torch eager and torch.compile at LLaMA-30B and Llama-3-8B scoring shapes:

    python -m benchmarks.kernels --device cuda [--dtype bf16] [--tokens 2048] [--kernels rms_norm,rope]
    python -m benchmarks.kernels --device cpu --quick     # Triton interpreter, tiny shapes: shows it runs

Each row: one kernel on one model's shapes. triton_ms is the graphopt:: op on CUDA (the launcher under the
Triton interpreter on CPU), eager_ms the plain-torch computation it replaces, compile_ms that computation
under torch.compile (compile time excluded); times are medians (triton.testing.do_bench on CUDA,
perf_counter over --reps on CPU). Memory-bound kernels report GB/s of compulsory traffic (inputs read
once, outputs written once), matmul kernels TFLOP/s of useful work (attention counts only visible
query/key pairs); frac_peak divides by the device's spec-sheet peak from PEAKS. max_abs_diff is
|triton - eager| in float32. CPU timings measure the interpreter, not a kernel: they show that it runs.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

import torch

import graphopt.kernels  # noqa: F401 (registers torch.ops.graphopt.*)
from benchmarks._common import packed_layout, time_ms
from graphopt.kernels.linear_logprob import linear_logprob_triton
from graphopt.kernels.logprob import logprob_reference, logprob_triton
from graphopt.kernels.prefix_attention import prefix_attention_reference, prefix_attention_triton, prefix_mask
from graphopt.kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton, rms_norm_reference, rms_norm_triton
from graphopt.kernels.rope import rope_reference, rope_triton
from graphopt.kernels.swiglu import swiglu_reference, swiglu_triton
from graphopt.model.args import ModelArgs

# device-name substring (first match wins) -> (dense fp16/bf16 tensor TFLOP/s, fp32 TFLOP/s, memory GB/s),
# vendor spec sheets, no sparsity
PEAKS = [
    ("H200", (989.0, 67.0, 4800.0)),
    ("H100 PCIe", (756.0, 51.0, 2000.0)),
    ("H100 NVL", (835.0, 60.0, 3900.0)),
    ("H100", (989.0, 67.0, 3350.0)),  # SXM
    ("A100-SXM4-80GB", (312.0, 19.5, 2039.0)),
    ("A100 80GB PCIe", (312.0, 19.5, 1935.0)),
    ("A100", (312.0, 19.5, 1555.0)),  # 40 GB
    ("L40S", (362.0, 91.6, 864.0)),
    ("A10G", (70.0, 31.2, 600.0)),
    ("V100", (125.0, 15.7, 900.0)),  # SXM2
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODELS = ["llama-30b", "llama-3-8b"]
KERNELS = ["rms_norm", "add_rms_norm", "rope", "swiglu", "logprob", "linear_logprob", "prefix_attention"]


@dataclass
class Case:
    kernel: str
    model: str
    shape: str
    triton: Callable[[], object]
    eager: Callable[..., object]  # plain torch; also what torch.compile gets
    args: tuple
    unit: str  # "GB/s" or "TFLOP/s"
    work: float  # bytes or FLOPs per call


def device_peaks(device: torch.device) -> tuple[str, tuple[float, float, float] | None]:
    if device.type != "cuda":
        return "cpu (Triton interpreter)", None
    name = torch.cuda.get_device_name(device)
    return name, next((peaks for key, peaks in PEAKS if key in name), None)


def naive_linear_logprob(hidden, weight, target):
    """What the graph computes without the fused op: the full [N, V] logits, log_softmax, gather."""
    return torch.log_softmax((hidden @ weight.t()).float(), dim=-1).gather(-1, target[:, None])[:, 0]


def build_cases(model: str, args: ModelArgs, tokens: int, scored: int, row_len: int, dtype, device) -> list[Case]:
    on_cuda = device.type == "cuda"
    el = torch.tensor([], dtype=dtype).element_size()
    D, H, Hkv, hd, F, V = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim, args.vocab_size
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    ops = torch.ops.graphopt
    cases = []
    x, r, w = randn(tokens, D), randn(tokens, D), randn(D)
    eps = args.norm_eps
    cases.append(Case("rms_norm", model, f"[{tokens}, {D}]",
                      (lambda: ops.rms_norm(x, w, eps)) if on_cuda else (lambda: rms_norm_triton(x, w, eps)),
                      rms_norm_reference, (x, w, eps), "GB/s", (2 * tokens * D + D) * el))
    cases.append(Case("add_rms_norm", model, f"[{tokens}, {D}]",
                      (lambda: ops.add_rms_norm(x, r, w, eps)) if on_cuda else (lambda: add_rms_norm_triton(x, r, w, eps)),
                      add_rms_norm_reference, (x, r, w, eps), "GB/s", (4 * tokens * D + D) * el))

    B, T = max(1, tokens // row_len), row_len
    q = randn(B, T, H, hd)
    pos = torch.arange(T, device=device).float()[None, :].expand(B, T)
    inv_freq = 1.0 / args.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd)
    ang = pos[..., None] * inv_freq  # [B, T, hd/2]
    cos, sin = ang.cos(), ang.sin()
    cases.append(Case("rope", model, f"q [{B}, {T}, {H}, {hd}]",
                      (lambda: ops.rope(q, cos, sin)) if on_cuda else (lambda: rope_triton(q, cos, sin)),
                      rope_reference, (q, cos, sin), "GB/s", 2 * q.numel() * el + 2 * cos.numel() * 4))

    gate, up = randn(tokens, 2 * F).split(F, dim=-1)  # the halves of merge_gate_up's output, as in the graph
    cases.append(Case("swiglu", model, f"halves of [{tokens}, {2 * F}]",
                      (lambda: ops.swiglu(gate, up)) if on_cuda else (lambda: swiglu_triton(gate, up)),
                      swiglu_reference, (gate, up), "GB/s", 3 * tokens * F * el))

    logits = randn(scored, V, scale=3.0)
    target = torch.randint(0, V, (scored,), generator=g, device=device)
    cases.append(Case("logprob", model, f"[{scored}, {V}]",
                      (lambda: ops.logprob(logits, target)) if on_cuda else (lambda: logprob_triton(logits, target)),
                      logprob_reference, (logits, target), "GB/s", scored * V * el + scored * 12))

    hidden, head = randn(scored, D), randn(V, D, scale=D ** -0.5)
    cases.append(Case("linear_logprob", model, f"[{scored}, {D}] x [{V}, {D}]",
                      (lambda: ops.linear_logprob(hidden, head, target)) if on_cuda
                      else (lambda: linear_logprob_triton(hidden, head, target)),
                      naive_linear_logprob, (hidden, head, target), "TFLOP/s", 2.0 * scored * V * D))

    context, ending = max(1, T * 3 // 16), max(1, T * 5 // 64)  # T=256: 2 questions of 48 + 4 x 20 tokens a row
    doc, seg = packed_layout(B, T, context, ending, device=device)
    qh, kh, vh = randn(B, H, T, hd), randn(B, Hkv, T, hd), randn(B, Hkv, T, hd)
    scale = hd ** -0.5
    visible = int(prefix_mask(doc, seg).sum())  # query/key pairs that do work (per head)
    cases.append(Case("prefix_attention", model, f"q [{B}, {H}, {T}, {hd}], kv heads {Hkv}",
                      (lambda: ops.prefix_attention(qh, kh, vh, doc, seg, scale)) if on_cuda
                      else (lambda: prefix_attention_triton(qh, kh, vh, doc, seg, scale)),
                      prefix_attention_reference, (qh, kh, vh, doc, seg, scale), "TFLOP/s",
                      4.0 * hd * H * visible))
    return cases


def max_abs_diff(a, b) -> float:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--quick", action="store_true", help="tiny shapes (the tiny-gqa preset) and few repeats")
    p.add_argument("--tokens", type=int, default=2048, help="B*T tokens a batch (row ops)")
    p.add_argument("--scored", type=int, default=1024, help="scored positions N (logprob ops)")
    p.add_argument("--row-len", type=int, default=256, help="T of a packed row (rope, attention)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of ModelArgs presets")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list out of {','.join(KERNELS)}")
    p.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="also time torch.compile of the eager computation (default: on for cuda, off for cpu)")
    p.add_argument("--reps", type=int, default=3, help="repeats a timing on CPU (CUDA uses do_bench)")
    p.add_argument("--out", default=None, help="write the table to this .csv or .json file")
    a = p.parse_args(argv)

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/kernels.py: --device cuda, but torch.cuda.is_available() is False; "
              "use --device cpu --quick to run the kernels under the Triton interpreter", file=sys.stderr)
        return 2
    unknown = set(a.kernels.split(",")) - set(KERNELS)
    if unknown:
        print(f"benchmarks/kernels.py: --kernels {sorted(unknown)} unknown; expected some of {KERNELS}", file=sys.stderr)
        return 2
    dtype = DTYPES[a.dtype]
    use_compile = a.compile if a.compile is not None else device.type == "cuda"
    models = ["tiny-gqa"] if a.quick else a.models.split(",")
    tokens, scored, row_len = (64, 16, 32) if a.quick else (a.tokens, a.scored, a.row_len)
    device_name, peaks = device_peaks(device)
    print(f"device: {device_name}; dtype {a.dtype}; tokens {tokens}, scored {scored}, row length {row_len}; "
          f"peaks {peaks or 'n/a'} (bf16 TFLOP/s, fp32 TFLOP/s, GB/s)", flush=True)

    import pandas as pd

    rows = []
    for model in models:
        cases = build_cases(model, ModelArgs.from_name(model), tokens, scored, row_len, dtype, device)
        for c in cases:
            if c.kernel not in a.kernels.split(","):
                continue
            eager = lambda c=c: c.eager(*c.args)  # noqa: E731
            diff = max_abs_diff(c.triton(), eager())
            t_triton = time_ms(c.triton, device, a.reps)
            t_eager = time_ms(eager, device, a.reps)
            t_compile = float("nan")
            if use_compile:
                torch._dynamo.reset()
                compiled = torch.compile(c.eager)
                compiled(*c.args)  # compile outside the timing
                t_compile = time_ms(lambda c=c, f=compiled: f(*c.args), device, a.reps)
            achieved = c.work / (t_triton * 1e-3) / (1e9 if c.unit == "GB/s" else 1e12)
            peak = None
            if peaks is not None:
                peak = peaks[2] if c.unit == "GB/s" else (peaks[1] if dtype == torch.float32 else peaks[0])
            rows.append({
                "kernel": c.kernel, "model": model, "shape": c.shape, "dtype": a.dtype,
                "triton_ms": round(t_triton, 4), "eager_ms": round(t_eager, 4), "compile_ms": round(t_compile, 4),
                "x_vs_eager": round(t_eager / t_triton, 2), "x_vs_compile": round(t_compile / t_triton, 2),
                "unit": c.unit, "achieved": float(f"{achieved:.4g}"),
                "frac_peak": round(achieved / peak, 3) if peak else float("nan"), "max_abs_diff": diff,
            })
            print(f"  {model:12s} {c.kernel:17s} triton {t_triton:9.3f} ms  eager {t_eager:9.3f} ms  "
                  f"compile {t_compile:9.3f} ms  {achieved:9.4g} {c.unit}  max|diff| {diff:.3g}", flush=True)

    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(df.to_string(index=False))
    if a.out:
        (df.to_json(a.out, orient="records", indent=1) if a.out.endswith(".json") else df.to_csv(a.out, index=False))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
