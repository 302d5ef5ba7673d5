"""`graphopt prune MODEL --out DIR [--ratio R] [--what ffn|heads|both] [--criterion l1|wanda|taylor]
[--calibration FILE] [--force] ...`: prune a model with prune_structured (budget per_layer) and save the
smaller model as a Hugging Face LLaMA directory (config.json + model.safetensors + tokenizer) that
`graphopt eval --model DIR` and transformers' LlamaForCausalLM load.

Everything a user can get wrong is refused before the model loads: the options, --ratio 0 (it would
save an unchanged copy), and an --out that is the model itself or inside it, a file, a folder that
cannot be written, or one that already holds files (--force: replace the checkpoint there, keeping
the files that are not a checkpoint's; graphopt.checkpoints.out_dir)."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  graphopt prune /ckpt/SmolLM2-135M --ratio 0.25 --out /ckpt/smollm2-ffn25-l1\n"
                     "  graphopt prune model.gguf --ratio 0.1 --criterion wanda "
                     "--calibration experiments/data/pruning-calibration.txt --out pruned/\n"
                     "  graphopt eval --model pruned/ --limit 100")
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory, .gguf file or preset (as graphopt eval)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the pruned model into")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of FFN channels / query heads to remove")
    parser.add_argument("--what", default="ffn", help="ffn, heads or both (default: %(default)s)")
    parser.add_argument("--criterion", default="l1", help="l1, wanda or taylor (default: %(default)s)")
    parser.add_argument("--calibration", default=None, metavar="FILE",
                        help="calibration text for wanda / taylor (.txt, a sequence per line, or .jsonl)")
    parser.add_argument("--n-calibration", type=int, default=128, metavar="N", help="calibration sequences used")
    parser.add_argument("--max-tokens", type=int, default=256, metavar="N", help="tokens per calibration sequence")
    parser.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer for a checkpoint that keeps "
                                                                          "it elsewhere (as graphopt eval)")
    parser.add_argument("--dtype", default="float32", help="dtype the model is loaded and saved in "
                                                          "(default: %(default)s)")
    parser.add_argument("--output", default="text", choices=("text", "json"), help="text lines or one JSON object")
    parser.add_argument("--force", action="store_true", help="write into an --out that already holds files: the "
                                                             "checkpoint there is replaced, other files are kept")


def prune_and_save(model, tokenizer, out_dir, force: bool = False, source=None, log=print, **options) -> dict:
    """Run prune_structured (budget per_layer) on `model`'s captured scoring graph and save the pruned
    model as an HF directory (force, source, log: as save_hf_checkpoint). -> the pass's stats plus
    out_dir and n_params of the saved model."""
    from graphopt.checkpoints.save_hf import pruned_transformer, save_hf_checkpoint
    from graphopt.optimize_model import optimize
    from graphopt.scoring.batch import ScoreModule, example_inputs

    spec = {"name": "prune_structured", **{k: v for k, v in options.items() if v is not None}}
    opt = optimize(ScoreModule(model), example_inputs(model.args.vocab_size, 2, 8)[:5], [spec], tokenizer=tokenizer)
    pruned = pruned_transformer(opt.graph, model.args)
    save_hf_checkpoint(pruned, out_dir, tokenizer, force=force, source=source, log=log)
    stats = dict(opt.records[0].stats)
    return {**stats, "out_dir": str(out_dir), "n_params": sum(p.numel() for p in pruned.parameters()),
            "model": pruned}


def main(args) -> int:
    import sys

    from graphopt.checkpoints.errors import CheckpointError
    from graphopt.checkpoints.out_dir import check_out_dir
    from graphopt.errors import UserError
    from graphopt.pipeline import PassError, parse_pass_spec

    if args.ratio == 0:
        raise UserError(f"--ratio 0 removes nothing: the saved model would be an unchanged copy of {args.model}; "
                        f"give the fraction to remove, e.g. --ratio 0.25")
    options = {"ratio": args.ratio, "what": args.what, "criterion": args.criterion, "calibration": args.calibration,
               "n_calibration": args.n_calibration, "max_tokens": args.max_tokens}
    try:  # bad options are reported before the model loads
        parse_pass_spec({"name": "prune_structured", **{k: v for k, v in options.items() if v is not None}})
    except PassError as e:
        raise UserError(f"prune_structured: {e}") from e
    try:  # --out before any work: minutes of pruning must not end in a folder that cannot take the result
        check_out_dir(args.out, source=args.model, force=args.force)
    except CheckpointError as e:
        raise UserError(f"--out {e}") from None
    import graphopt
    model, tokenizer = graphopt.load_model(args.model, dtype=args.dtype, tokenizer=args.tokenizer)
    log = (lambda line: print(line, file=sys.stderr)) if args.output == "json" else print
    try:
        result = prune_and_save(model, tokenizer, args.out, force=args.force, source=args.model, log=log, **options)
    except (PassError, CheckpointError) as e:
        raise UserError(str(e)) from e
    result.pop("model")
    if args.output == "json":
        print(json.dumps(result))
        return 0
    print(f"pruned  {args.model}: {result['params_before'] / 1e6:.2f}M -> {result['params_after'] / 1e6:.2f}M "
          f"graph parameters ({args.what} {args.ratio:g}, {args.criterion}); ffn channels removed "
          f"{result['ffn_channels_removed']}, query heads removed {result['query_heads_removed']}")
    print(f"saved   {args.out}  ({result['n_params'] / 1e6:.2f}M parameters; graphopt eval --model {args.out})")
    return 0
