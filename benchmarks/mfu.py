"""Model FLOP/s utilisation (MFU) of graphopt's scoring forward, and the projected time for the full
HellaSwag validation set (10,042 questions).

    python -m benchmarks.mfu                                   # CUDA: LLaMA-30B shape, random bf16 weights
    python -m benchmarks.mfu --layers 20                       # the same layers, fewer of them (MFU per layer
                                                               # is the same; the projection scales to 60)
    python -m benchmarks.mfu --device cpu --preset default --dtype float32 --questions 16   # shows it works

The model is built on the meta device and filled with random weights on the target device, so a 30B
model never exists in host memory (bf16 30B: 65 GB, fits one 80 GB GPU). Scoring: synthetic
HellaSwag-format questions in packed rows (each context once, its endings after it), the exact passes
(+ prefix_attention on CUDA: the block-skipping Triton kernel), run as the FX graph or compiled.

Model FLOPs, counted from the batches (what the scoring needs, not what padding or masked attention
costs): 2 x body weights x tokens fed + 2 x LM head x scored positions + 4 x dim x visible
(query, key) pairs per layer. MFU = model FLOPs / seconds / peak. Peak: --peak-tflops, else the dense
bf16/fp16 tensor-core figure of a known GPU, else (CPU) a 2048^3 matmul measured here.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import graphopt
from benchmarks._common import layout_batches, peak_tflops
from benchmarks._kernel_profile import kernel_table, markdown
from graphopt.checkpoints.assemble import finish_rope, parse_dtype
from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.compilers import COMPILERS
from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.runner.timing import peak_memory_mb, reset_peak_memory, timed
from graphopt.runner.worker import first_calls
from graphopt.scoring import ScoreModule, build_requests, score_requests

HELLASWAG_VAL_QUESTIONS = 10_042


def random_model(args: ModelArgs, dtype: torch.dtype, device: str, seed: int = 0) -> Transformer:
    """A Transformer with random LLaMA-scale weights made directly on `device` (no host copy)."""
    with torch.device("meta"):
        model = Transformer(args).to(dtype)  # cast while weightless: a 30B fp32 copy would not fit
    model = init_random_weights(model.to_empty(device=device), seed=seed)
    finish_rope(model, device)
    return model.eval()


def model_flops(args: ModelArgs, batches) -> float:
    """Useful matmul FLOPs of scoring `batches` (see the module docstring)."""
    body = sum(p for p in layer_param_counts(args)) * args.n_layers
    head = args.dim * args.vocab_size
    total = 0.0
    for b in batches:
        doc = getattr(b, "doc_ids", None)
        real = int((doc >= 0).sum()) if doc is not None else b.input_ids.numel()
        scored = int((b.owners >= 0).sum())
        visible = int(b.mask.sum())  # padding tokens see themselves only: a rounding error
        total += 2 * body * real + 2 * head * scored + 4 * args.dim * visible * args.n_layers
    return total


def layer_param_counts(args: ModelArgs) -> list[int]:
    """Weights of one layer's matmuls: q, k, v, o, gate, up, down."""
    d, hd, kv = args.dim, args.head_dim, args.n_kv_heads
    return [d * d, d * kv * hd, d * kv * hd, d * d, d * args.hidden_dim, d * args.hidden_dim, args.hidden_dim * d]


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """What this device's matmul library reaches on one large square product (median of `reps`,
    CUDA events after a warm-up): the practical ceiling that MFU is also read against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def merged_gemm_shapes(args: ModelArgs) -> list[tuple[int, int]]:
    """(in, out) of one layer's matmuls as the graph runs them after merge_qkv / merge_gate_up."""
    d, hd = args.dim, args.head_dim
    return [(d, (args.n_heads + 2 * args.n_kv_heads) * hd), (args.n_heads * hd, d), (d, 2 * args.hidden_dim),
            (args.hidden_dim, d)]


def gemm_floor_seconds(args: ModelArgs, batches, dtype: torch.dtype, device: str, reps: int = 5) -> float:
    """Seconds the scoring run's matmuls alone take at the rates this device reaches on the graph's own
    shapes: each batch's fed tokens (padding included) through every layer's merged projections, and
    its scored positions through the LM head (F.linear, as the uncompiled graph calls them; median of
    `reps`). The floor of a run with compiler none; a compiled graph may beat it (on CPU,
    inductor-frozen's prepacked weights run ~25 % faster than F.linear on bench-100m's shapes)."""
    def seconds(m: int, k: int, n: int) -> float:
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        torch.nn.functional.linear(x, w)  # warm-up (library heuristics, allocation)
        return statistics.median(timed(lambda: torch.nn.functional.linear(x, w), device)[1] for _ in range(reps))

    cache: dict[tuple[int, int, int], float] = {}
    total = 0.0
    for b in batches:
        fed, scored = b.input_ids.numel(), int((b.owners >= 0).sum())
        for m, (k, n), count in [(fed, kn, args.n_layers) for kn in merged_gemm_shapes(args)] + \
                                [(scored, (args.dim, args.vocab_size), 1)]:
            if (m, k, n) not in cache:
                cache[m, k, n] = seconds(m, k, n)
            total += count * cache[m, k, n]
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--preset", default="llama-30b", help="model shape (random weights) (default: %(default)s)")
    p.add_argument("--layers", type=int, default=None, help="build only this many layers (default: all)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (default: %(default)s)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--questions", type=int, default=256, help="synthetic questions timed (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens per batch (default: %(default)s)")
    p.add_argument("--row-len", type=int, default=None,
                   help="packed row length (default: 2048 with prefix_attention, whose kernel skips the key "
                        "blocks of other questions, so long rows cost no attention and cut padding to <1%%; "
                        "else the longest question)")
    p.add_argument("--compiler", default="none", choices=COMPILERS, help="(default: %(default)s, the FX graph)")
    p.add_argument("--no-prefix-attention", action="store_true", help="keep SDPA over the mask on CUDA")
    p.add_argument("--fuse-residual", action="store_true",
                   help="fuse_rmsnorm with fuse_residual: each residual add joins the norm after it "
                        "(graphopt.add_rms_norm), one pass over the residual stream instead of two")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak for --dtype")
    p.add_argument("--profile", action="store_true",
                   help="after the timed repeats, one more call under torch.profiler: time by kind of kernel "
                        "(matmul, attention, norms, copies, launch gaps, ...) and the longest kernels")
    a = p.parse_args(argv)

    dtype = parse_dtype(a.dtype)
    args = ModelArgs.from_name(a.preset)
    full_layers = args.n_layers
    if a.layers:
        args = dataclasses.replace(args, n_layers=a.layers)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = random_model(args, dtype, a.device)
    n_params = sum(t.numel() for t in model.parameters())
    score_module = ScoreModule(model)
    del model  # the graph owns the weights from here: merge_qkv/merge_gate_up can free the unmerged ones
    rows = graphopt.load_hellaswag(None, limit=a.questions)
    requests = build_requests(rows, WordHashTokenizer(args.vocab_size))
    prefix = a.device.startswith("cuda") and not a.no_prefix_attention
    row_len = a.row_len or (2048 if prefix else None)
    batches = [b.to(a.device) for b in layout_batches(score_module.model, requests, "packed", row_len=row_len, max_tokens=a.max_tokens)]
    passes = graphopt.parse_pipeline("gpu" if prefix else "exact")
    if a.fuse_residual:
        passes = [graphopt.parse_pipeline([{"name": "fuse_rmsnorm", "fuse_residual": True}])[0]
                  if p.name == "fuse_rmsnorm" else p for p in passes]
    fn = graphopt.optimize(score_module, batches[0].model_inputs(), passes, a.compiler)
    del score_module
    reset_peak_memory(a.device)
    first_calls(fn, batches, a.device)  # compile / warm up every shape, as the runner does
    setup_s = time.perf_counter() - t0
    def run():
        return score_requests(fn, batches, len(requests), progress=False, device=a.device)

    seconds = statistics.median(timed(run, a.device)[1] for _ in range(a.repeats))
    flops = model_flops(args, batches)
    peak, peak_src = peak_tflops(a.device, dtype, a.peak_tflops)
    achieved = flops / seconds / 1e12
    per_question = seconds / len(rows) * full_layers / args.n_layers
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"# mfu: {a.preset} shape, {args.n_layers}/{full_layers} layers ({n_params / 1e9:.2f}B params built), "
          f"{a.dtype}, {name}, torch {torch.__version__}")
    fed = sum(b.input_ids.numel() for b in batches)
    real = sum(int((b.doc_ids >= 0).sum()) for b in batches)
    names = ", ".join(p.label() for p in passes)
    print(f"passes: {names}; compiler {a.compiler}; {len(rows)} questions in {len(batches)} batches "
          f"(max {a.max_tokens} tokens, rows of {max(b.input_ids.shape[1] for b in batches)}: {real} tokens, "
          f"{fed / real - 1:.1%} padding); setup + compile {setup_s:.1f} s")
    print()
    mem_gb = peak_memory_mb(a.device) / 1024
    floor = gemm_floor_seconds(args, batches, dtype, a.device)
    mm = matmul_tflops(a.device, dtype) if a.device.startswith("cuda") else None
    mm_cells = f"{mm:.3g} | {achieved / mm:.1%}" if mm else "- | -"  # CPU: the peak column is measured already
    print("| questions | run s (median of %d) | model TFLOP | TFLOP/s | peak TFLOP/s | MFU | matmul TFLOP/s "
          "(8192^3) | of matmul | peak mem GB | projected s, 10,042 questions, all layers |" % a.repeats)
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(rows)} | {seconds:.3f} | {flops / 1e12:.3g} | {achieved:.3g} | {peak:.3g} ({peak_src}) | "
          f"{achieved / peak:.1%} | {mm_cells} | {mem_gb:.1f} | "
          f"{per_question * HELLASWAG_VAL_QUESTIONS:.0f} |")
    print()
    print(f"matmuls alone (F.linear), timed one by one on the graph's own shapes: {floor:.3f} s "
          f"({flops / floor / 1e12:.3g} model TFLOP/s, MFU {flops / floor / 1e12 / peak:.1%} if nothing else ran); "
          f"the run took {seconds - floor:+.3f} s beyond them ({seconds / floor:.2f}x)")
    if a.profile:
        print()
        print(markdown(*kernel_table(run, a.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
