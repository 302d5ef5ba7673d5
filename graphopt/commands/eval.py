"""`graphopt eval [--model PATH_OR_PRESET] [--data PATH] [--split S] [--limit N] [--dtype D] [--device D]
[--batch-size N] [--strategy S] [--pipeline P] [--compiler C] [--output text|json]`: score HellaSwag with
one model, eager or through a pass pipeline (graphopt.optimize), as lm-evaluation-harness does, and
print acc / acc_norm / items / time."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from graphopt.cli_types import non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Score HellaSwag with one model, by default through graphopt's fastest exact path (packed rows, "
        "the exact passes; answers equal to the per-pair eager reference in fp32), exactly as "
        "lm-evaluation-harness's hellaswag task: query 'activity_label: ctx_a Ctx_b', continuation ' ' + ending, acc = highest "
        "log-likelihood, acc_norm = highest log-likelihood per character of the ending. With no --model "
        "and no --data, the embedded default runs (random ~58M LLaMA + 200 synthetic rows): a smoke "
        "test of the pipeline, accuracy about chance (0.25).")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  graphopt eval --limit 50\n"
                     "  graphopt eval --model /ckpt/llama-3.2-1b --pipeline exact --compiler inductor --output json\n"
                     "  graphopt eval --model /ckpt/llama/30B --data /data/hellaswag --dtype float16 "
                     "--device cuda --batch-size 32")
    parser.add_argument("--model", default="default", metavar="PATH_OR_PRESET",
                        help="a model preset (default, tiny, llama-7b, ...: random weights) or a checkpoint "
                             "directory (Meta params.json + consolidated.NN.pth, or Hugging Face config.json "
                             "+ safetensors) (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="tokenizer.json / tokenizer.model (or a folder holding one) for a checkpoint that "
                             "keeps it elsewhere (default: the one next to the weights or in the folder above; "
                             "none found is an error)")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="HellaSwag: a datasets.save_to_disk directory, a directory of Rowan/hellaswag "
                             "parquet files, one parquet file, or the original hellaswag_val.jsonl "
                             "(default: 200 synthetic rows)")
    parser.add_argument("--split", default="validation", help="split to read from a --data directory (default: "
                                                              "%(default)s; the test split has no labels); a single "
                                                              "file is read whole")
    parser.add_argument("--limit", type=non_negative_int, default=None, metavar="N",
                        help="score only the first N rows (default: all)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="pairs per forward; 1 = each (context, ending) pair alone, lm-eval's reference "
                             "(default: %(default)s)")
    parser.add_argument("--strategy", default=None,
                        help="batching strategy (default: tree with a pipeline: a prefix tree over all requests, "
                             "each shared prefix computed once, zero-shot rows packed; with --pipeline none, per_pair "
                             "for --batch-size 1, else padded); tree, packed, shared_prefix, bucketed, padded, per_pair")
    bos = parser.add_mutually_exclusive_group()
    bos.add_argument("--add-bos", dest="add_bos", action="store_const", const=True, default=None,
                     help="prepend BOS to every request (lm-eval's add_bos_token=True)")
    bos.add_argument("--no-add-bos", dest="add_bos", action="store_const", const=False,
                     help="never prepend BOS (lm-eval's add_bos_token=False). Default: the tokenizer's own default, "
                          "as lm-eval 0.4.13's hf model (Llama-2/3 tokenizers add BOS, Qwen2's do not)")
    parser.add_argument("--pipeline", default="auto", metavar="NAME_OR_PASSES",
                        help="auto (default): the fastest path whose answers equal the per-pair reference in "
                             "fp32 (CPU: exact-cpu, CUDA: gpu; packed rows, no compile; with --compiler: exact, "
                             "the pipeline that compiles); none: the eager model, "
                             "each pair alone (lm-eval's reference); or a named pipeline (exact, fast, fast-cpu, "
                             "int8, ...) or comma-separated pass names, see `graphopt passes`")
    parser.add_argument("--compiler", default=None, choices=("none", "inductor", "inductor-frozen", "eager-fx"),
                        help="how the (optimised) model runs (default: none, the graph as it is; inductor "
                             "compiles are cached across runs, see `graphopt cache`)")
    parser.add_argument("--check", action="store_true",
                        help="also score the per-pair eager reference and print how many answers agree and "
                             "the largest log-likelihood difference")
    parser.add_argument("--output", default="text", choices=("text", "json"),
                        help="text lines, or one JSON object on stdout (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    from graphopt.errors import UserError
    from graphopt.data import load_hellaswag
    from graphopt.scoring import evaluate
    from graphopt.scoring.scorer import layout_names

    from graphopt.env_checks import check_device
    check_device(args.device)
    if args.strategy is not None and args.strategy not in layout_names():
        raise UserError(f"unknown --strategy {args.strategy!r} (strategies: {', '.join(layout_names())})")
    pipeline = None if args.pipeline == "none" else args.pipeline
    if pipeline != "auto" and pipeline is not None:  # a bad pipeline is reported before anything loads
        from graphopt.pipeline import PassError, check_pipeline
        try:
            pipeline = check_pipeline(pipeline, args.compiler or "none")
        except PassError as e:
            raise UserError(f"--pipeline {args.pipeline!r}: {e}") from e
    rows = load_hellaswag(args.data, split=args.split, limit=args.limit)  # data errors first: cheaper
    if not rows:
        raise UserError(f"no rows to score in {args.data or 'the synthetic set'} (split {args.split!r}, "
                        f"limit {args.limit})")

    import graphopt
    from graphopt.time_line import Clock, time_columns, time_line

    clock = Clock()
    model, tokenizer = graphopt.load_model(args.model, dtype=args.dtype, device=args.device,
                                           tokenizer=args.tokenizer)
    load_s = clock.loaded()
    n_params = sum(p.numel() for p in model.parameters())
    data_name = args.data or "synthetic (embedded default)"
    split = args.split if args.data is not None and Path(args.data).expanduser().is_dir() else None  # else: read whole
    text = args.output == "text"
    if text:
        print(f"model  {args.model}  ({n_params / 1e6:.1f}M parameters, {args.dtype}, {args.device}, "
              f"loaded in {load_s:.1f}s)")
        print(f"data   {data_name}  " + (f"split={split}  " if split else "") + f"rows={len(rows)}")

    result = evaluate(model, tokenizer, rows, batch_size=args.batch_size, strategy=args.strategy,
                      device=args.device, progress=not args.no_progress, add_bos=args.add_bos,
                      pipeline=pipeline, compiler=args.compiler,
                      keep_model_weights=args.check)  # weights held once unless --check runs the model eagerly
    times = time_columns(clock.startup_s, load_s, result["setup_split"], result["setup_seconds"], result["seconds"])
    print(time_line(times), file=sys.stderr)  # where the time went: startup, load, setup, scoring
    check = _check(model, tokenizer, rows, args, result) if args.check else {}
    s = result["seconds"]
    if not text:
        keep = ("acc", "acc_norm", "n_items", "n_requests", "tokens_scored", "tokens_processed", "seconds",
                "setup_seconds", "strategy", "pipeline", "compiler", "n_shapes", "n_compiles", "cache_hits")
        print(json.dumps({"model": args.model, "data": data_name, "split": split, "dtype": args.dtype,
                          "device": args.device, "n_params": n_params, "load_seconds": load_s,
                          **{k: result[k] for k in keep}, "time": times, **check}))
        return 0
    print(f"scoring {result['strategy']}  batch_size={args.batch_size}  requests={result['n_requests']}  "
          f"tokens processed={result['tokens_processed']} (scored {result['tokens_scored']})")
    if result["pipeline"]:
        print(f"passes  {' + '.join(result['pipeline'])}")
        print(f"        compiler={result['compiler']}  capture + passes {result['setup_seconds']:.1f}s  "
              f"batch shapes={result['n_shapes']}  {_compiles(result)}")
    print(f"acc       {result['acc']:.4f}")
    print(f"acc_norm  {result['acc_norm']:.4f}")
    print(f"items     {result['n_items']}")
    print(f"time      {s:.2f}s  ({result['n_items'] / s:.1f} items/s, {result['tokens_processed'] / s:.0f} tokens/s)")
    if check:
        print(f"check     agree {check['agree']:.4f} with the per-pair eager reference (acc {check['reference_acc']:.4f}, "
              f"acc_norm {check['reference_acc_norm']:.4f}); max |dloglik| {check['max_abs_dloglik']:.3g}")
    return 0


def _compiles(result: dict) -> str:
    n, hits = result["n_compiles"], result["cache_hits"]
    return f"compiles={n}" + (f" ({hits} from the cache)" if n else "")


def _check(model, tokenizer, rows, args, result) -> dict:
    """Score the per-pair eager reference too: the share of rows whose acc and acc_norm choices both
    agree, and the largest |log-likelihood difference| over all endings."""
    from graphopt.scoring import evaluate
    from graphopt.scoring.metrics import same_choices
    ref = evaluate(model, tokenizer, rows, device=args.device, progress=not args.no_progress, add_bos=args.add_bos)
    agree = same_choices(result, ref)
    diff = max(abs(a - b) for got, want in zip(result["loglik"], ref["loglik"]) for a, b in zip(got, want))
    return {"agree": sum(agree) / len(agree), "max_abs_dloglik": diff, "reference_acc": ref["acc"],
            "reference_acc_norm": ref["acc_norm"], "reference_seconds": ref["seconds"]}
