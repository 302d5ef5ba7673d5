"""`graphopt passes [NAME ...] [--json]`: list every registered graph pass (the `passes/` library),
its one-line description, whether it is exact (keeps outputs equal within fp tolerance), its options
with type, default, allowed values and help, its order rules, and the named pipelines."""
from __future__ import annotations

import argparse
import json
import textwrap

from graphopt.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  graphopt passes\n"
                     "  graphopt passes prune_structured cast_dtype\n"
                     "  graphopt passes --json\n\n"
                     "In an experiment YAML a pass is named by its key, with options as a mapping, and a named\n"
                     "pipeline stands for its passes:\n"
                     "  passes: [prune_lm_head, {name: fused_logprob, with_linear: true}]\n"
                     "  passes: exact\n"
                     "  passes: [exact, {name: cast_dtype, dtype: float16}]")
    parser.add_argument("names", nargs="*", metavar="NAME", help="show only these passes (default: all)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")


def pass_table(names: list[str] | None = None) -> list[dict]:
    """[{name, description, exact, options: {opt: {type, default, choices, help}}, order}] for the
    registered passes."""
    from graphopt.pipeline import PassError, get_pass, list_passes
    if names:
        try:
            infos = [get_pass(n) for n in names]
        except PassError as e:
            raise UserError(str(e)) from e
    else:
        infos = list_passes()
    return [{"name": p.name, "description": p.description, "exact": p.exact,
             "options": {k: {"type": o.type.__name__, "default": o.default, "choices": list(o.choices),
                             "help": o.help} for k, o in p.options.items()},
             "order": [_rule_text(r) for r in p.rules]}
            for p in infos]


def _rule_text(rule) -> str:
    if rule.first == "*":
        return f"runs after every other pass ({rule.why})"
    verb = "requires" if rule.required else "after"
    return f"{rule.then} {verb} {rule.first} ({rule.why})"


def pipeline_table() -> list[dict]:
    from graphopt.pipeline import list_pipelines
    return [{"name": name, "description": desc, "passes": [s.label() for s in specs]}
            for name, (desc, specs) in list_pipelines().items()]


def format_table(rows: list[dict], width: int = 100) -> str:
    lines = []
    name_w = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        head = f"{r['name']:<{name_w}}  {'exact  ' if r['exact'] else 'approx '}"
        body = textwrap.wrap(r["description"], width - len(head)) or [""]
        lines.append(head + body[0])
        lines += [" " * len(head) + b for b in body[1:]]
        for key, o in r["options"].items():
            allowed = f" ({' | '.join(map(str, o['choices']))})" if o.get("choices") else ""
            opt = f"{' ' * (name_w + 2)}--  {key}: {o['type']} = {o['default']!r}{allowed}  "
            lines += textwrap.wrap(o["help"], width, initial_indent=opt, subsequent_indent=" " * len(opt))
        for rule in r.get("order", []):
            lines += textwrap.wrap(rule, width, initial_indent=" " * (name_w + 2) + "order: ",
                                   subsequent_indent=" " * (name_w + 9))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    rows = pass_table(args.names)
    pipelines = [] if args.names else pipeline_table()
    if args.json:
        print(json.dumps({"passes": rows, "pipelines": pipelines}, indent=2, default=str))
        return 0
    print(f"{len(rows)} passes (exact: outputs kept within fp tolerance; approx: changes numerics by design)\n")
    print(format_table(rows))
    if pipelines:
        print(f"\n{len(pipelines)} named pipelines (use a name wherever a pass list is accepted)\n")
        for p in pipelines:
            lines = textwrap.wrap(p["description"], 100, initial_indent=f"{p['name']:<10}",
                                  subsequent_indent=" " * 10)
            lines += textwrap.wrap(" + ".join(p["passes"]), 100, initial_indent=" " * 10 + "= ",
                                   subsequent_indent=" " * 12)
            print("\n".join(lines))
    return 0
