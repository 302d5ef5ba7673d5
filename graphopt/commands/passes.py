"""`graphopt passes [NAME ...] [--json]`: list every registered graph pass (the `passes/` library),
its one-line description, whether it is exact (keeps outputs equal within fp tolerance) and its
options with type, default and help."""
from __future__ import annotations

import argparse
import json
import textwrap

from graphopt.cli import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  graphopt passes\n"
                     "  graphopt passes prune_structured cast_dtype\n"
                     "  graphopt passes --json\n\n"
                     "In an experiment YAML a pass is named by its key, with options as a mapping:\n"
                     "  passes: [prune_lm_head, {name: fused_logprob, with_linear: true}]")
    parser.add_argument("names", nargs="*", metavar="NAME", help="show only these passes (default: all)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")


def pass_table(names: list[str] | None = None) -> list[dict]:
    """[{name, description, exact, options: {opt: {type, default, help}}}] for the registered passes."""
    from graphopt.pipeline import PassError, get_pass, list_passes
    if names:
        try:
            infos = [get_pass(n) for n in names]
        except PassError as e:
            raise UserError(str(e)) from e
    else:
        infos = list_passes()
    return [{"name": p.name, "description": p.description, "exact": p.exact,
             "options": {k: {"type": o.type.__name__, "default": o.default, "help": o.help} for k, o in p.options.items()}}
            for p in infos]


def format_table(rows: list[dict], width: int = 100) -> str:
    lines = []
    name_w = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        head = f"{r['name']:<{name_w}}  {'exact  ' if r['exact'] else 'approx '}"
        body = textwrap.wrap(r["description"], width - len(head)) or [""]
        lines.append(head + body[0])
        lines += [" " * len(head) + b for b in body[1:]]
        for key, o in r["options"].items():
            opt = f"{' ' * (name_w + 2)}--  {key}: {o['type']} = {o['default']!r}  "
            lines += textwrap.wrap(o["help"], width, initial_indent=opt, subsequent_indent=" " * len(opt))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    rows = pass_table(args.names)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{len(rows)} passes (exact: outputs kept within fp tolerance; approx: changes numerics by design)\n")
    print(format_table(rows))
    return 0
