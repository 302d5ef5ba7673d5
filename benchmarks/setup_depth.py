"""Setup against depth: the same model at 16 and 64 layers (default: the `default` preset's width, random
weights), set up as `graphopt eval` sets it up (one Scorer, pipeline auto, the prefix tree, synthetic
questions), each in a fresh process, cold (an empty GRAPHOPT_CACHE_DIR) then warm (the same folder).
Setup per distinct block should not grow with depth: capture and passes run once per block shape;
only the per-layer weights (merged, packed) and the splice grow with the layer count. The first call
(a forward, not setup: no compiler) is reported beside it.

    python -m benchmarks.setup_depth                          # 16 and 64 layers of `default`
    python -m benchmarks.setup_depth --preset bench-100m --layers 16,64 --out depth.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import cache_env, run_timed

PARTS = ("capture_s", "passes_s", "kept_graph_load_s", "weights_s", "graph_compile_s")  # setup_s: their sum


def measure(preset: str, layers: int, questions: int) -> dict:
    """In this process: build the model, set it up through a Scorer, call it once -> the setup split."""
    from dataclasses import replace

    import torch

    from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
    from graphopt.data import load_hellaswag
    from graphopt.model import ModelArgs, Transformer
    from graphopt.scoring.requests import build_requests
    from graphopt.scoring.scorer import Scorer
    from graphopt.time_line import time_columns

    args = replace(ModelArgs.from_name(preset), n_layers=layers)
    torch.manual_seed(0)
    model = Transformer(args).eval()
    requests = build_requests(load_hellaswag(None, limit=questions), WordHashTokenizer(args.vocab_size))
    scorer = Scorer(model, "auto")
    prepared = scorer.prepare(requests)
    t0 = time.perf_counter()
    scorer.setup(prepared)
    setup_s = time.perf_counter() - t0
    scores = scorer.score_prepared(prepared, progress=False)  # the first call happens here
    cols = time_columns(0.0, 0.0, scorer.setup_split(), setup_s, scores.seconds)
    return {"layers": layers, "preset": preset, **{k: cols[k] for k in ("setup_s", "setup_cached", "setup_path",
                                                                          "scoring_s", "first_call_s", *PARTS)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", help="the width (a graphopt preset) (default: %(default)s)")
    p.add_argument("--layers", default="16,64", help="depths, comma-separated (default: %(default)s)")
    p.add_argument("--questions", type=int, default=10, help="synthetic questions scored (default: %(default)s)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "preset:layers:questions": measure in this process
    args = p.parse_args(argv)
    if args.one:
        preset, layers, questions = args.one.split(":")
        print(json.dumps(measure(preset, int(layers), int(questions))))
        return 0
    rows = []
    for layers in map(int, args.layers.split(",")):
        cache = Path(tempfile.mkdtemp(prefix="setup-depth-"))
        try:
            for state in ("cold", "warm"):
                run = run_timed([sys.executable, "-m", "benchmarks.setup_depth", "--one",
                                 f"{args.preset}:{layers}:{args.questions}"], cache_env(cache), None)
                if run["rc"] != 0:
                    raise SystemExit(f"{layers} layers, {state}: exit {run['rc']}: {run['stderr'][-2000:]}")
                row = {"state": state, "wall_s": run["wall_s"], "peak_rss_mb": run.get("peak_rss_mb"),
                       "load_1m": os.getloadavg()[0], **json.loads(run["stdout"].strip().splitlines()[-1])}
                rows.append(row)
                print(f"{layers:3d} layers {state}: setup {row['setup_s']:.2f}s (" +
                      ", ".join(f"{k[:-2]} {row[k]:.2f}" for k in PARTS) + f"), load {row['load_1m']:.1f}", flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    by = {(r["layers"], r["state"]): r["setup_s"] for r in rows}
    depths = sorted({r["layers"] for r in rows})
    if len(depths) == 2:
        lo, hi = depths
        for state in ("cold", "warm"):
            print(f"{state}: setup {hi} layers / {lo} layers = {by[(hi, state)] / by[(lo, state)]:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
