"""`graphopt prune MODEL --out DIR [--ratio R] [--what ffn|heads|both] [--criterion l1|wanda|taylor]
[--calibration FILE] ...`: prune a model with prune_structured (budget per_layer) and save the smaller
model as a Hugging Face LLaMA directory (config.json + model.safetensors + tokenizer) that
`graphopt eval --model DIR` and transformers' LlamaForCausalLM load."""
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


def prune_and_save(model, tokenizer, out_dir, **options) -> dict:
    """Run prune_structured (budget per_layer) on `model`'s captured scoring graph and save the pruned
    model as an HF directory. -> the pass's stats plus out_dir and n_params of the saved model."""
    from graphopt.checkpoints.save_hf import pruned_transformer, save_hf_checkpoint
    from graphopt.optimize_model import optimize
    from graphopt.scoring.batch import ScoreModule, example_inputs

    spec = {"name": "prune_structured", **{k: v for k, v in options.items() if v is not None}}
    opt = optimize(ScoreModule(model), example_inputs(model.args.vocab_size, 2, 8)[:5], [spec], tokenizer=tokenizer)
    pruned = pruned_transformer(opt.graph, model.args)
    save_hf_checkpoint(pruned, out_dir, tokenizer)
    stats = dict(opt.records[0].stats)
    return {**stats, "out_dir": str(out_dir), "n_params": sum(p.numel() for p in pruned.parameters()),
            "model": pruned}


def main(args) -> int:
    from graphopt.checkpoints.errors import CheckpointError
    from graphopt.errors import UserError
    from graphopt.pipeline import PassError, parse_pass_spec

    options = {"ratio": args.ratio, "what": args.what, "criterion": args.criterion, "calibration": args.calibration,
               "n_calibration": args.n_calibration, "max_tokens": args.max_tokens}
    try:  # bad options are reported before the model loads
        parse_pass_spec({"name": "prune_structured", **{k: v for k, v in options.items() if v is not None}})
    except PassError as e:
        raise UserError(f"prune_structured: {e}") from e
    import graphopt
    model, tokenizer = graphopt.load_model(args.model, dtype=args.dtype, tokenizer=args.tokenizer)
    try:
        result = prune_and_save(model, tokenizer, args.out, **options)
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
