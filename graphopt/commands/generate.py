"""`graphopt generate [PROMPT ...] [--file PATH] [--max-new-tokens N] [--stop STR] [--model PATH_OR_PRESET]
[--pipeline P] [--compiler C] [--slots N] [--out PATH [--force]]`: greedy completions of prompts through
the optimised generation graph (graphopt.generation: a static KV cache, continuous batching), printed or
written as JSON lines, with the prefill / decode tokens per second."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from graphopt.cli_types import non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Greedy completions of prompts, through the same optimised graph that scores them: each prompt is "
        "prefilled once (prompts sharing a prefix share its prefill), then one decode step per token over a "
        "static KV cache, many prompts decoding together in --slots rows (a finished one frees its row for "
        "the next). Completions stop at the tokenizer's EOS, at a --stop string, or after --max-new-tokens.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  graphopt generate 'The capital of France is' --model /ckpt/smollm2 --max-new-tokens 16\n"
                     "  graphopt generate --file prompts.jsonl --model /ckpt/llama-3.2-1b --out completions.jsonl\n"
                     "  graphopt generate --file questions.txt --stop $'\\n\\n' --slots 16 --dtype bfloat16 "
                     "--pipeline fast-cpu")
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to complete (or --file)")
    parser.add_argument("--file", default=None, metavar="PATH",
                        help="prompts from a file: .jsonl = one JSON object per line with a \"prompt\" string; "
                             "anything else = one prompt per line (blank lines skipped)")
    parser.add_argument("--max-new-tokens", type=non_negative_int, default=64, metavar="N",
                        help="new tokens per prompt at most (default: %(default)s)")
    parser.add_argument("--stop", action="append", default=[], metavar="STR",
                        help="end a completion where its text first holds STR (cut there); repeatable")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the tokenizer's EOS token")
    parser.add_argument("--model", default="default", metavar="PATH_OR_PRESET",
                        help="a model preset (random weights) or a checkpoint directory / GGUF file, as for "
                             "`graphopt eval` (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="tokenizer.json / tokenizer.model (or a folder holding one) kept apart from the weights")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument("--pipeline", default="auto", metavar="NAME_OR_PASSES",
                        help="auto (default: decode-cpu on CPU, exact on CUDA); none: the eager model; or a named "
                             "pipeline (exact, fast-cpu, int8, ...) or comma-separated passes, see `graphopt passes` "
                             "(cache_attention is added to any pipeline)")
    parser.add_argument("--compiler", default="none", choices=("none", "inductor", "inductor-frozen", "eager-fx"),
                        help="how the optimised graph runs (default: %(default)s)")
    parser.add_argument("--slots", type=positive_int, default=None, metavar="N",
                        help="prompts decoding together (rows of the static KV cache) (default: as many as a KV "
                             "budget of a quarter of the weights' bytes, at least 1 GiB, holds at the prompts' "
                             "length, up to 32)")
    bos = parser.add_mutually_exclusive_group()
    bos.add_argument("--add-bos", dest="add_bos", action="store_const", const=True, default=None,
                     help="prepend BOS to every prompt (default: the tokenizer's own default)")
    bos.add_argument("--no-add-bos", dest="add_bos", action="store_const", const=False, help="never prepend BOS")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="write the completions there as JSON lines (index, prompt, completion, finish, "
                             "prompt_tokens, new_tokens) instead of printing them")
    parser.add_argument("--force", action="store_true", help="replace an --out file that exists already")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_prompts(path: str) -> list[str]:
    """A prompts file (see --file) -> its prompts; UserError naming the file and line for a bad one."""
    from graphopt.errors import UserError
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--file {path}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"--file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if p.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--file {path} line {n}: not JSON ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise UserError(f"--file {path} line {n}: expected an object with a \"prompt\" string")
        prompts.append(row["prompt"])
    return prompts


def _check_pipeline(pipeline, compiler: str) -> None:
    from graphopt.errors import UserError
    from graphopt.pipeline import PassError, check_compiler_fits, check_order
    from graphopt.generation.step import generation_pipeline
    try:
        specs = generation_pipeline(pipeline)
        check_order(specs)
        check_compiler_fits(specs, compiler)
    except (PassError, KeyError, ValueError) as e:
        raise UserError(f"--pipeline {pipeline!r}: {e.args[0] if e.args else e}") from e


def main(args) -> int:
    from graphopt.env_checks import check_device
    from graphopt.errors import UserError

    check_device(args.device)
    if bool(args.prompts) == bool(args.file):
        raise UserError("give the prompts on the command line or with --file (one of the two)")
    prompts = read_prompts(args.file) if args.file else list(args.prompts)
    if not prompts:
        raise UserError(f"--file {args.file}: no prompts in it")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not args.force:
        raise UserError(f"--out {args.out}: the file exists; name a new file, or add --force to replace it")
    if out is not None and out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; name a file")
    pipeline = None if args.pipeline == "none" else args.pipeline
    if pipeline == "auto":
        from graphopt.generation.step import decode_auto_pipeline
        pipeline = decode_auto_pipeline(args.device, args.compiler)
    if pipeline is not None:
        _check_pipeline(pipeline, args.compiler)

    import graphopt
    from graphopt.generation.engine import DecodeEngine
    from graphopt.generation.text import decode_completions, text_requests

    t0 = time.perf_counter()
    model, tokenizer = graphopt.load_model(args.model, dtype=args.dtype, device=args.device, tokenizer=args.tokenizer)
    try:
        requests = text_requests(tokenizer, prompts, args.max_new_tokens, args.stop, args.add_bos,
                                 stop_at_eos=not args.ignore_eos)
    except ValueError as e:
        raise UserError(str(e)) from e
    limit = model.args.max_seq_len
    for i, r in enumerate(requests):
        if r.max_new_tokens and len(r.prompt_ids) + r.max_new_tokens - 1 > limit:
            raise UserError(f"prompt {i + 1}: {len(r.prompt_ids)} tokens + --max-new-tokens {r.max_new_tokens} "
                            f"exceed the model's {limit} positions; shorten it or ask for fewer tokens")
    n_params = sum(p.numel() for p in model.parameters())
    say = lambda text: print(text, file=sys.stderr)  # noqa: E731 (stdout holds the completions)
    say(f"model  {args.model}  ({n_params / 1e6:.1f}M parameters, {args.dtype}, {args.device}, loaded in "
        f"{time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
    engine = DecodeEngine(model, pipeline, args.compiler, slots=args.slots, device=args.device)
    passes = engine.graph.pass_names
    say(f"graph  {' + '.join(passes) if passes else 'eager (no passes)'}  compiler={args.compiler}  "
        f"capture + passes {time.perf_counter() - t0:.1f}s")
    completions = engine.generate(requests, progress=not args.no_progress)
    texts = decode_completions(tokenizer, prompts, requests, completions, args.stop)
    if out is not None:
        from graphopt.runner.store import atomic_write
        rows = [json.dumps({"index": i, "prompt": t.prompt, "completion": t.text, "finish": t.finish,
                            "prompt_tokens": t.prompt_tokens, "new_tokens": t.new_tokens}) for i, t in enumerate(texts)]
        atomic_write(out, lambda tmp: Path(tmp).write_text("".join(r + "\n" for r in rows), encoding="utf-8"))
    else:
        for i, t in enumerate(texts):
            print(f"--- {i + 1} ({t.finish}, {t.new_tokens} new tokens)")
            print(t.prompt + t.text)
    say(summary(engine.stats) + (f"\nwrote {len(texts)} completions to {out}" if out is not None else ""))
    return 0


def summary(stats: dict) -> str:
    """The prefill / decode figures of a DecodeEngine.generate call, in one line."""
    return (f"prefill {stats['prefill_tokens']} tokens in {stats['prefill_seconds']:.2f}s "
            f"({stats['prefill_tok_s']:.1f} tok/s) · decode {stats['decode_tokens']} tokens in "
            f"{stats['decode_seconds']:.2f}s ({stats['decode_tok_s']:.1f} tok/s, {stats['mean_batch']:.1f} rows per "
            f"step of {stats['slots']} slots) · {stats['generated_tokens']} new tokens, {stats['seconds']:.2f}s")
