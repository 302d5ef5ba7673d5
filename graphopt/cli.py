"""`graphopt` command line. Each subcommand lives in graphopt/commands/<name>.py and provides
`add_arguments(parser)` and `main(args) -> int`; modules are imported only when their command runs."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "run": "run an experiment YAML: every pass combination, measured against the eager reference",
    "eval": "score HellaSwag with one model (eager or through a pass pipeline) and print acc / acc_norm / time",
    "prune": "prune FFN channels / attention heads (prune_structured) and save the smaller model as a Hugging "
             "Face LLaMA directory",
    "passes": "list every registered graph pass with its description and options",
    "inspect": "op counts of a model's captured graph before and after each pass",
    "report": "print the results table of an experiment directory (120 columns; --wide: all) and write "
              "results.md / results.csv / plots next to it",
    "cache": "show or clear the compile cache kept across runs",
    "lm-eval": "lm-evaluation-harness's command line with --model graphopt registered (arguments go to lm-eval)",
}


from graphopt.errors import UserError  # noqa: F401  (re-exported: commands raise it)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphopt",
        description="Graph-optimisation pipeline for LLaMA-family models scoring multiple-choice "
                    "benchmarks (HellaSwag). With no model or data given, the embedded default is used: "
                    "preset 'default' (a random ~58M-parameter LLaMA, GQA, vocabulary 32000; not the small "
                    "test preset 'tiny') and synthetic HellaSwag-format data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            _command_module(name).add_arguments(p)
        except ImportError as e:  # one broken command must not take the others down
            p.set_defaults(import_error=f"{type(e).__name__}: {e}")
            p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _command_module(name: str):
    return importlib.import_module(f"graphopt.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # every argument after it is lm-eval's: argparse must not see them
        return _run_lm_eval(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "import_error", None):
        print(f"graphopt {args.command}: cannot load this command ({args.import_error})", file=sys.stderr)
        return 1
    try:
        return int(_command_module(args.command).main(args) or 0)
    except (UserError, FileNotFoundError, KeyError, ValueError) as e:
        if isinstance(e, KeyError) and e.args:
            e = e.args[0]
        print(f"graphopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a command's SIGTERM handled alike: KeyboardInterrupt("SIGTERM")
        why = f" ({e})" if str(e) else ""
        print(f"graphopt {args.command}: interrupted{why}; results written so far are kept", file=sys.stderr)
        return 130


def _run_lm_eval(argv: list[str]) -> int:
    try:
        return _command_module("lm-eval").run(argv)
    except ImportError as e:
        print(f"graphopt lm-eval: lm-evaluation-harness is not installed ({e}); pip install lm-eval", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"graphopt lm-eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
