"""`graphopt inspect MODEL [--passes a,b,c] [--method export|dynamo]`: capture MODEL (a preset name or a
checkpoint directory) as ScoreModule on a small example batch, run the passes one at a time, and print
the op counts (by node target) after capture and after each pass, then nodes before/after and matches
per pass."""
from __future__ import annotations

import argparse
from collections import Counter

import torch

from graphopt.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  graphopt inspect tiny --passes fuse_rmsnorm,fuse_rope,sdpa_attention\n"
                     "  graphopt inspect tiny --passes exact,cast_dtype\n"
                     "  graphopt inspect /path/to/llama-7b --method dynamo --all-ops")
    parser.add_argument("model", nargs="?", default="default", help="preset name or checkpoint directory (default: default)")
    parser.add_argument("--passes", default="", help="comma-separated pass names or named pipelines (exact, fast, "
                                                     "...), run in this order (see `graphopt passes`)")
    parser.add_argument("--method", choices=("export", "dynamo"), default="export", help="capture method (default: export)")
    parser.add_argument("--dtype", default="float32", help="model dtype (default: float32)")
    parser.add_argument("--batch", type=int, default=2, help="example batch rows B (default: 2)")
    parser.add_argument("--seq-len", type=int, default=16, help="example row length T (default: 16)")
    parser.add_argument("--all-ops", action="store_true", help="list every op, not only those a pass changed")
    parser.add_argument("--verify", action="store_true", help="check outputs after each pass (max |diff| column)")


def op_counts(gm) -> Counter:
    """Node count by target: call_function targets by their op name, get_attr nodes as 'get_attr'."""
    counts = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_function":
            counts[_op_name(node.target)] += 1
        elif node.op in ("get_attr", "call_module", "call_method"):
            counts[node.op if node.op == "get_attr" else f"{node.op}:{node.target}"] += 1
    return counts


def _op_name(target) -> str:
    name = getattr(target, "__name__", None) if not isinstance(target, torch._ops.OpOverload) else None
    return name if name and not str(target).startswith(("aten.", "graphopt.")) else str(target)


def _load(model: str, dtype: str):
    try:
        from graphopt.checkpoints import load_model
    except ImportError:  # loaders not there: presets only
        load_model = None
    if load_model is not None:
        return load_model(model, dtype=dtype)[0]
    from graphopt.model.args import PRESETS, ModelArgs
    from graphopt.model.llama import Transformer, init_random_weights
    if model not in PRESETS:
        raise UserError(f"unknown model {model!r}: expected a preset ({', '.join(PRESETS)})")
    return init_random_weights(Transformer(ModelArgs.from_name(model))).to(getattr(torch, dtype)).eval()


def main(args) -> int:
    import graphopt
    from graphopt.pass_manager import count_nodes
    from graphopt.pipeline import PassError, check_order, parse_pipeline
    from graphopt.scoring.batch import ScoreModule, example_inputs

    try:
        specs = parse_pipeline(args.passes)
        check_order(specs)
    except PassError as e:
        raise UserError(str(e)) from e
    if args.batch < 1 or args.seq_len < 2:
        raise UserError(f"--batch must be >= 1 and --seq-len >= 2 (got {args.batch}, {args.seq_len})")
    model = _load(args.model, args.dtype)
    margs = model.args
    inputs = example_inputs(margs.vocab_size, args.batch, min(args.seq_len, margs.max_seq_len))

    columns = []  # (after what, op counts): the captured graph, then each pass

    def after_each(record, gm):
        columns.append((record.name if record else "captured", op_counts(gm)))
        if record is None:
            stats = gm.meta.get("capture_stats", {})
            print(f"{args.model}: captured with {args.method}"
                  + (f" in {stats['seconds']:.1f}s" if "seconds" in stats else "") + f", {count_nodes(gm)} nodes")
    try:
        opt = graphopt.optimize(ScoreModule(model), inputs, specs, capture=args.method, verify=args.verify,
                                after_each=after_each)
        opt(*inputs)  # a dynamo capture runs the passes on the first call
    except PassError as e:
        raise UserError(str(e)) from e
    print()
    print(format_counts(columns, changed_only=bool(specs) and not args.all_ops))
    if opt.records:
        print()
        print(format_records(opt.records))
    return 0


def format_counts(columns, changed_only: bool) -> str:
    ops = sorted({op for _, c in columns for op in c}, key=lambda op: (-columns[0][1][op], op))
    if changed_only:
        ops = [op for op in ops if len({c[op] for _, c in columns}) > 1]
    header = ["op"] + [name for name, _ in columns]
    rows = [[op] + [str(c[op]) for _, c in columns] for op in ops]
    rows.append(["(all nodes)"] + [str(sum(c.values())) for _, c in columns])
    return _table(header, rows)


def format_records(records) -> str:
    header = ["pass", "matches", "nodes before", "nodes after", "seconds", "max |diff|"]
    rows = [[r.name, str(r.matches), str(r.nodes_before), str(r.nodes_after), f"{r.seconds:.2f}",
             "" if r.max_abs_diff is None else f"{r.max_abs_diff:.2g}"] for r in records]
    return _table(header, rows)


def _table(header, rows) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])
