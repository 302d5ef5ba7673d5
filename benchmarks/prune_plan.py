"""The 12 GB plan: the smallest uniform structured-pruning ratio at which a model's HellaSwag scoring fits a
GPU's memory, computed from the shapes, and a check that loads a random-weight pruned model of that shape:

    python -m benchmarks.prune_plan                                   # the table: llama-3.1-8b, qwen2.5-7b
    python -m benchmarks.prune_plan --check llama-3.1-8b --ratio 0.4 --pruning ffn   # peak RSS vs the figure

A uniform ratio r gives a regular model, i.e. just another ModelArgs (as prune_structured cuts it with
budget per_layer): ffn drops int(r * hidden_dim) FFN channels per layer; heads drops whole kv groups
(int(r * n_heads) query heads wanted, rounded down to whole groups of n_rep, at least one group kept: a ratio
under one group removes none); both does the two at the same r. Embeddings and the LM head are not pruned.

GPU figure (GiB = 2^30 bytes; a "12 GB" card has 12 GiB) = fp16 weights + the scoring workload's peak
activations + OVERHEAD_GIB (CUDA context with cuBLAS / Triton modules 0.5 + caching-allocator slack 0.5).
Activations: one packed batch of TOKENS tokens (rows of ROW_LEN, graphopt's packed layout), no KV cache,
every position scored (an upper bound: HellaSwag scores only the endings), through the exact/gpu pipeline
(merged qkv and gate/up, fused norm/rope/swiglu, SDPA: no [H, T, T] scores). See activation_bytes.
The figure counts each weight once, as a weightless load holds them (a meta-device capture filled by
optimize's load_weights, as --check and the sharded runner load); graphopt.load_model + optimize keeps the
module's q/k/v and gate/up next to merge_qkv / merge_gate_up's concatenations (+5.5 GiB at 12 GiB's Llama).
The check runs on CPU (no CUDA context): peak RSS above the process's RSS after imports, against
weights + activations of its own small batch (CHECK_TOKENS), in bfloat16.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

from graphopt.model.args import ModelArgs
from graphopt.runner.report_table import markdown_table

GIB = 2 ** 30
SHAPES = ("llama-3.1-8b", "qwen2.5-7b")  # Llama-3-8B has 3.1's shape (only the RoPE scaling differs)
PRUNINGS = ("ffn", "heads", "both")
BUDGETS_GIB = (12, 16, 24)
OVERHEAD_GIB = {"CUDA context": 0.5, "allocator slack": 0.5}
TOKENS, ROW_LEN = 4096, 256  # one packed batch: 16 rows of 256 tokens
CHECK_TOKENS = 256  # the CPU check's batch: small, so it runs in a couple of minutes
HEAD_CHUNK = 8192  # vocabulary rows per LM-head chunk (graphopt.kernels.linear_logprob's reference)
GRID = [p / 100 for p in range(100)]  # ratios tried: 0 %, 1 %, ..., 99 %


def pruned_args(args: ModelArgs, ratio: float, pruning: str) -> tuple[ModelArgs, dict]:
    """(the pruned shape, what was cut per layer) for a uniform ratio, counted as prune_structured counts."""
    if pruning not in PRUNINGS:
        raise ValueError(f"pruning {pruning!r} is not one of {', '.join(PRUNINGS)}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio {ratio} must be in [0, 1)")
    n_rep = args.n_heads // args.n_kv_heads
    ffn_cut = min(int(ratio * args.hidden_dim), args.hidden_dim - 1) if pruning in ("ffn", "both") else 0
    groups_cut = min(int(ratio * args.n_heads) // n_rep, args.n_kv_heads - 1) if pruning in ("heads", "both") else 0
    new = replace(args, hidden_dim=args.hidden_dim - ffn_cut, n_heads=args.n_heads - groups_cut * n_rep,
                  n_kv_heads=args.n_kv_heads - groups_cut)
    cut = {"ffn_channels": ffn_cut, "kv_groups": groups_cut, "query_heads": groups_cut * n_rep}
    if pruning in ("heads", "both") and ratio > 0 and groups_cut == 0:
        cut["note"] = (f"{ratio:.0%} of {args.n_heads} query heads is less than one kv group "
                       f"({n_rep} heads): no heads removed")
    return new, cut


def param_count(args: ModelArgs) -> int:
    """Parameters of Transformer(args), each tensor once (a tied head is the embedding table)."""
    q, kv, d = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.dim
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if args.qkv_bias else 0) + (2 * args.head_dim if args.qk_norm else 0)
    layer = attn + 3 * d * args.hidden_dim + 2 * d  # + attention_norm, ffn_norm
    return args.vocab_size * d * (1 if args.tie_embeddings else 2) + args.n_layers * layer + d  # + final norm


def activation_bytes(args: ModelArgs, tokens: int, row_len: int, scored: int, elt: int = 2) -> dict[str, int]:
    """Peak transient bytes of one packed batch (B = tokens // row_len rows of T = row_len), parts and "total".
    Every tensor of a phase is counted alive at once (an upper bound on the FX graph, which frees each
    value after its last use); the phases run one after another, so the peak is the largest phase plus
    the inputs and RoPE tables, which live throughout. elt: bytes per element of the model dtype."""
    N, T, S, D, d = tokens, row_len, scored, args.head_dim, args.dim
    B = -(-tokens // row_len)
    q, kv = args.n_heads * D, args.n_kv_heads * D
    parts = {
        # ids, positions, doc/seg ids [B, T] int64; mask [B, T, T] bool; score_idx, targets [S] int64;
        # cos/sin gathered at the positions [B, T, D/2] fp32
        "inputs": 4 * 8 * N + B * T * T + 2 * 8 * S + 2 * 4 * N * D // 2,
        "rope tables": 2 * 4 * args.max_seq_len * D // 2,  # cos/sin [max_seq_len, D/2] fp32 buffers
        # x, normed, qkv (merged), q/k after RoPE, attention out, wo out [N, .]; the mask as SDPA's
        # additive bias [B, 1, T, T] in the model dtype
        "attention": elt * N * (3 * d + (q + 2 * kv) + (q + kv) + q) + elt * B * T * T,
        # residual h, normed, gate|up merged [N, 2 hidden], swiglu [N, hidden]
        "ffn": elt * N * (2 * d + 3 * args.hidden_dim),
        # x, final norm [N, d]; scored rows [S, d]; one chunk of logits [S, chunk] in the model dtype and
        # fp32; W[targets] and the fp32 target logits [S, d]
        "lm head": elt * (2 * N * d + S * d) + (elt + 4) * S * min(HEAD_CHUNK, args.vocab_size) + (elt + 8) * S * d,
    }
    parts["total"] = parts["inputs"] + parts["rope tables"] + max(parts["attention"], parts["ffn"], parts["lm head"])
    return parts


def plan_row(preset: str, ratio: float, pruning: str, tokens: int = TOKENS, row_len: int = ROW_LEN,
             elt: int = 2) -> dict:
    """One record: the pruned shape's parameters, weight / activation / total bytes (GPU: + overhead)."""
    base = ModelArgs.from_name(preset)
    args, cut = pruned_args(base, ratio, pruning)
    n, n0 = param_count(args), param_count(base)
    weights = elt * n
    act = activation_bytes(args, tokens, row_len, scored=tokens, elt=elt)["total"]
    overhead = int(sum(OVERHEAD_GIB.values()) * GIB)
    return {"shape": preset, "pruning": pruning, "ratio": ratio, "params": n, "params_full": n0,
            "hidden_dim": args.hidden_dim, "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, **cut,
            "weight_bytes": weights, "activation_bytes": act, "overhead_bytes": overhead,
            "total_bytes": weights + act + overhead}


def smallest_fitting(preset: str, pruning: str, budget_gib: float, tokens: int = TOKENS,
                     row_len: int = ROW_LEN) -> dict:
    """The first grid ratio whose total fits budget_gib; if none does, the 99 % record with fits=False."""
    for ratio in GRID:
        row = plan_row(preset, ratio, pruning, tokens, row_len)
        if row["total_bytes"] <= budget_gib * GIB:
            return {**row, "budget_gib": budget_gib, "fits": True}
    return {**row, "budget_gib": budget_gib, "fits": False}


def _cut_text(r: dict) -> str:
    if r["ratio"] == 0:
        return "none (unpruned)"
    out = []
    if r["pruning"] in ("ffn", "both"):
        out.append(f"FFN {r['hidden_dim'] + r['ffn_channels']}→{r['hidden_dim']}")
    if r["pruning"] in ("heads", "both"):
        kv0 = r["n_kv_heads"] + r["kv_groups"]
        out.append(f"kv groups {kv0}→{r['n_kv_heads']}" if r["kv_groups"] else f"kv groups {kv0} (none removed)")
    return ", ".join(out)


def markdown(records: list[dict]) -> str:
    header = ["shape", "pruning", "budget", "ratio", "cut per layer", "params kept", "kept %", "weights GiB",
              "activations GiB", "total GiB"]
    rows = []
    for r in records:
        ratio = f"{r['ratio']:.0%}" if r["fits"] else f"none fits (99 %: {r['total_bytes'] / GIB:.2f} GiB)"
        rows.append([r["shape"], r["pruning"], f"{r['budget_gib']:g} GiB", ratio, _cut_text(r),
                     f"{r['params'] / 1e9:.3f} B", f"{100 * r['params'] / r['params_full']:.1f} %",
                     f"{r['weight_bytes'] / GIB:.2f}", f"{r['activation_bytes'] / GIB:.2f}",
                     f"{r['total_bytes'] / GIB:.2f}"])
    return markdown_table(header, rows, [False] * len(header), pad=False)


# ---------------------------------------------------------------------------------------------- the check

def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def check_batch(vocab_size: int, tokens: int, seed: int = 0):
    """One packed batch of synthetic HellaSwag-sized questions (context 40 tokens, 4 endings of 22) in rows of
    `tokens` tokens, as graphopt's packed strategy builds it (max_tokens = tokens: one row)."""
    import torch
    from graphopt.scoring.batch import Request
    from graphopt.scoring.row_packing import packed_batches
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: tuple(torch.randint(0, vocab_size, (n,), generator=g).tolist())  # noqa: E731
    requests = []
    for qn in range(max(1, tokens // 124 + 1)):  # a question is 40 + 4 * 21 = 124 tokens in its row
        ctx = ids(40)
        requests += [Request(qn, c, ctx, ids(22), 100) for c in range(4)]
    return packed_batches(requests, row_len=tokens, max_tokens=tokens)[0]


def _fill_random(gm, args: ModelArgs, seed: int = 0) -> int:
    """Every meta tensor the graph reads gets random values in its dtype (scales as init_random_weights;
    RoPE tables computed); a tensor under several names (tied) is filled once. Returns parameters filled."""
    import math
    import torch
    from graphopt.graph_attrs import attr, replace_tensor
    from graphopt.model.llama import model_rope_tables
    gen, done, n = torch.Generator().manual_seed(seed), set(), 0
    for target in sorted({nd.target for nd in gm.graph.nodes if nd.op == "get_attr"}):
        cur = attr(gm, target)
        if not isinstance(cur, torch.Tensor) or not cur.is_meta or id(cur) in done:
            continue
        leaf = target.rsplit(".", 1)[-1]
        if leaf in ("rope_cos", "rope_sin"):
            cos, sin = model_rope_tables(args, cur.shape[0])
            new = (cos if leaf == "rope_cos" else sin).to(cur.dtype)
            n -= new.numel()  # a buffer, not a parameter
        elif "norm" in target:
            new = torch.ones(cur.shape, dtype=cur.dtype)
        else:
            new = torch.randn(cur.shape, generator=gen, dtype=cur.dtype)  # drawn in the dtype: no fp32 copy
            new.mul_(2.0 / math.sqrt(cur.shape[1]) if target.endswith("output.weight") else 0.02)
        n += new.numel()
        done.add(id(cur))
        replace_tensor(gm, cur, new)
    return n


def run_check(preset: str, ratio: float, pruning: str, tokens: int, dtype: str = "bfloat16") -> dict:
    """In this process (meant to be a fresh one): the pruned shape built on the meta device, captured and run
    through graphopt's exact pipeline weightless, then filled with random weights (no module copy, no fp32
    model), one packed batch scored. Returns RSS figures (ru_maxrss) and the batch's shape."""
    import torch
    import graphopt
    from graphopt.model.llama import Transformer
    from graphopt.scoring.batch import ScoreModule
    torch.set_num_threads(2)
    args, _ = pruned_args(ModelArgs.from_name(preset), ratio, pruning)
    batch = check_batch(args.vocab_size, tokens)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = Transformer(args).to(dtype=getattr(torch, dtype))
    model.rope_cos = torch.empty(model.rope_cos.shape, device="meta")  # float32 tables, as load_model keeps them
    model.rope_sin = torch.empty(model.rope_sin.shape, device="meta")
    filled = {}
    opt = graphopt.optimize(ScoreModule(model).eval(), batch.model_inputs(), "exact", device="cpu",
                            load_weights=lambda gm: filled.setdefault("params", _fill_random(gm, args)))
    del model
    with torch.inference_mode():
        logprobs = opt(*batch.model_inputs())
    assert logprobs.shape == batch.targets.shape and bool(torch.isfinite(logprobs).all()), "non-finite log-probs"
    return {"preset": preset, "ratio": ratio, "pruning": pruning, "dtype": dtype, "params": filled["params"],
            "rows": batch.input_ids.shape[0], "row_len": batch.input_ids.shape[1], "scored": batch.targets.numel(),
            "rss_start_bytes": rss_start, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "max_logprob": float(logprobs.max()), "seconds": time.perf_counter() - t0}


def check(preset: str, ratio: float, pruning: str, tokens: int = CHECK_TOKENS, available: int | None = None) -> dict:
    """run_check in a fresh `python -m benchmarks.prune_plan --child` process, compared with the computed
    bf16 weights + activations of its batch. Refused before the child starts when that figure (+ 1 GiB of
    process slack) exceeds the memory available now (MemAvailable, or `available`)."""
    args, cut = pruned_args(ModelArgs.from_name(preset), ratio, pruning)  # bad preset / ratio / pruning: here
    if ratio > 0 and cut["ffn_channels"] == 0 and cut["kv_groups"] == 0:
        raise ValueError(f"{preset}: {pruning} ratio {ratio} removes nothing ({cut.get('note', '')})")
    weights = 2 * param_count(args)
    act = activation_bytes(args, tokens, tokens, scored=tokens, elt=2)["total"]  # one row, every position (bound)
    avail = _available_bytes() if available is None else available
    if weights + act + GIB > avail:
        raise MemoryError(f"check of {preset} {pruning} {ratio}: needs ~{(weights + act + GIB) / GIB:.1f} GiB, only "
                          f"{avail / GIB:.1f} GiB available now (MemAvailable); check a smaller preset")
    cmd = [sys.executable, "-m", "benchmarks.prune_plan", "--child", json.dumps([preset, ratio, pruning, tokens])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"check subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    act = activation_bytes(args, rec["rows"] * rec["row_len"], rec["row_len"], rec["scored"], elt=2)["total"]
    grown = rec["peak_rss_bytes"] - rec["rss_start_bytes"]
    return {**rec, "computed_params": param_count(args), "weight_bytes": weights, "activation_bytes": act,
            "computed_bytes": weights + act, "rss_growth_bytes": grown, "growth_over_computed": grown / (weights + act)}


def check_text(r: dict) -> str:
    return (f"{r['preset']} {r['pruning']} {r['ratio']:.0%} ({r['dtype']}, CPU, {r['rows']}x{r['row_len']} tokens, "
            f"{r['scored']} scored): params {r['params']:,} (computed {r['computed_params']:,}); peak RSS "
            f"{r['peak_rss_bytes'] / GIB:.2f} GiB = {r['rss_start_bytes'] / GIB:.2f} after imports + "
            f"{r['rss_growth_bytes'] / GIB:.2f} grown; computed weights + activations "
            f"{r['computed_bytes'] / GIB:.2f} GiB ({r['weight_bytes'] / GIB:.2f} + {r['activation_bytes'] / GIB:.3f}); "
            f"growth / computed = {r['growth_over_computed']:.3f}; {r['seconds']:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), help="model presets to plan for")
    p.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS_GIB), help="GPU memory, GiB")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"tokens per packed batch (table: {TOKENS}; check: {CHECK_TOKENS})")
    p.add_argument("--check", metavar="PRESET", help="load a random-weight pruned PRESET on CPU and score one batch")
    p.add_argument("--ratio", type=float, help="the check's pruning ratio in [0, 1)")
    p.add_argument("--pruning", choices=PRUNINGS, default="ffn", help="the check's way of pruning")
    p.add_argument("--child", help=argparse.SUPPRESS)  # the check's fresh process: JSON [preset, ratio, pruning, tokens]
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(run_check(*json.loads(a.child))))
        return 0
    if a.check:
        if a.ratio is None:
            p.error("--check needs --ratio")
        print(check_text(check(a.check, a.ratio, a.pruning, a.tokens or CHECK_TOKENS)))
        return 0
    for s in a.shapes:
        ModelArgs.from_name(s)  # an unknown preset: its error, before any table work
    tokens = a.tokens or TOKENS
    print(f"fp16 weights + activations of one packed batch ({tokens} tokens in rows of {ROW_LEN}, every position "
          f"scored, no KV cache) + {sum(OVERHEAD_GIB.values())} GiB overhead "
          f"({', '.join(f'{k} {v}' for k, v in OVERHEAD_GIB.items())}); GiB = 2^30 bytes\n")
    print(markdown([smallest_fitting(s, pr, b, tokens) for b in a.budgets for s in a.shapes for pr in PRUNINGS]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
