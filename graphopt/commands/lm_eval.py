"""`graphopt lm-eval ARGS...`: lm-evaluation-harness's own command line with `--model graphopt` registered.

Every argument goes to lm-eval unchanged, so it prints what `lm_eval` prints and writes the same
--output_path files. Before lm-eval starts (and before any model loads), a generative task whose
generation_kwargs (with --gen_kwargs) ask for sampling is refused when the model is graphopt: it
generates greedily. A checkpoint graphopt cannot load (missing, truncated, no tokenizer, an unsupported
family) is one line and exit 2, as in `graphopt eval`."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

USAGE = """usage: graphopt lm-eval [lm-eval's arguments]

lm-evaluation-harness with graphopt registered as a model. Example:
  graphopt lm-eval --model graphopt --model_args pretrained=DIR,dtype=float32,pipeline=auto \\
      --tasks hellaswag,arc_easy,piqa --output_path out/

--model_args of graphopt: pretrained (HF / Meta directory, .gguf file or preset), dtype (float32, bfloat16,
float16), device (cpu, cuda), pipeline (auto: the fastest path whose answers equal the per-pair reference
in fp32; none: eager per pair, lm-eval's way; a named pipeline: exact, exact-cpu, fast, fast-cpu, int8, gpu;
or pass names joined by '+'), compiler (none, inductor, inductor-frozen), max_tokens (per batch, default
4096), row_len, add_bos_token (default: the tokenizer's own, as lm-eval's hf model), max_length, max_gen_toks
(new tokens of a generative task that sets none, default 256), slots (generative prompts decoding together,
default 16), progress,
data_parallel and tensor_parallel (under torchrun: replicas x shards = the number of processes, e.g.
  torchrun --nproc-per-node 4 -m graphopt lm-eval --model graphopt \\
      --model_args pretrained=DIR,data_parallel=2,tensor_parallel=2 --tasks hellaswag
the replicas split the requests by token count; only rank 0 prints and writes).
Generative tasks (generate_until: gsm8k, ifeval, ...) decode greedily, with lm-eval's hf stop rules; tasks
that ask for sampling are refused. --apply_chat_template and --system_instruction use the checkpoint's own
chat template (chat_template.jinja, tokenizer_config.json's chat_template, a .gguf's tokenizer.chat_template).
lm-eval's --batch_size is accepted and not used: graphopt batches by tokens (max_tokens). A --model_args key
wins over lm-eval's flag of the same name (device=cpu over --device, which lm-eval passes as cuda:0 by default).
Everything below is lm-eval's own help.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:  # (graphopt.cli hands lm-eval's argv over directly)
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="lm-eval's arguments, unchanged")


def run(argv: list[str]) -> int:
    """lm-eval's CLI on argv (without the program name), graphopt registered."""
    from graphopt.harness import register
    from graphopt.harness.tasks import task_index_built_once

    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print(USAGE)
    register()
    with task_index_built_once():  # graphopt's task check and lm-eval's run share one index of the task folders
        return _run_registered(argv)


def _run_registered(argv: list[str]) -> int:
    from graphopt.checkpoints import CheckpointError
    from graphopt.errors import UserError
    from graphopt.harness.lm import print_time_lines
    from graphopt.harness.tasks import refuse_sampling_tasks

    if _value(argv, "--model") == "graphopt":
        refuse_sampling_tasks(argv)
    argv, quiet = rank0_writes(argv)
    try:
        with contextlib.redirect_stdout(quiet) if quiet is not None else contextlib.nullcontext():
            code = _cli_evaluate(argv)
        print_time_lines()  # where the time went, once, after lm-eval's table
    except BaseException as e:
        if _joined_a_group():  # under torchrun: leave at once, peers fail or time out in their collective
            sys.stderr.write(f"graphopt lm-eval: rank {_rank()} failed: {type(e).__name__}: {e}\n"
                             f"{traceback.format_exc()}")
            sys.stderr.flush()
            os._exit(1)
        if isinstance(e, CheckpointError):  # graphopt's own: one line, as `graphopt eval` prints it
            raise UserError(str(e)) from None
        raise
    if _joined_a_group():  # skip gloo / nccl teardown once peers may have gone (as graphopt run's ranks)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# lm-eval's flags that write files or send results elsewhere (flag -> how many values it takes)
WRITING_FLAGS = {"--output_path": 1, "-o": 1, "--log_samples": 0, "-s": 0, "--wandb_args": 1,
                 "--wandb_config_args": 1, "--hf_hub_log_args": 1}


def rank0_writes(argv: list[str]):
    """Under torchrun every process runs lm-eval to the end (each answers every request); only global
    rank 0 prints and writes its results. lm-eval itself returns results on LOCAL_RANK 0 only (its
    convention for models that split work themselves and report rank 0, as GraphoptLM does), which is
    one process per node: the other nodes' LOCAL_RANK 0 processes get argv without the writing flags and
    stdout to /dev/null. -> (argv, None or the stream that replaces stdout)."""
    if int(os.environ.get("RANK", "0")) == 0:
        return argv, None
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        flag = arg.split("=", 1)[0]
        if flag in WRITING_FLAGS:
            skip = WRITING_FLAGS[flag] if "=" not in arg else 0
            continue
        kept.append(arg)
    return kept, open(os.devnull, "w")


def _cli_evaluate(argv: list[str]) -> int:
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else (print(e.code, file=sys.stderr) or 1)
    finally:
        sys.argv = old
    return 0


def _joined_a_group() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank()


def main(args) -> int:
    return run(list(args.lm_eval_args))


def _value(argv: list[str], flag: str) -> str | None:
    """The value given to `flag` (as `--flag v` or `--flag=v`); several words after it are joined by commas
    (lm-eval accepts `--tasks a b` as well as `--tasks a,b`)."""
    for i, arg in enumerate(argv):
        if arg == flag:
            values = []
            for word in argv[i + 1:]:
                if word.startswith("-"):
                    break
                values.append(word)
            return ",".join(values) or None
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
