"""pipeline_split: cut the captured graph at transformer-layer boundaries into n_stages submodules
(torch.fx.passes.split_module): stage s holds layers [s*L/n, (s+1)*L/n), the embedding sits in
stage 0, the final norm + LM head + log-prob in the last stage.

Each node's stage: at least that of its inputs and of the weights it reads (layers.i -> its stage;
the final norm -> last; the embedding table / LM head weight bound nothing: the lookup reads only
the ids, and the head follows the final norm), then pushed down to the earliest stage that uses it,
so values computed from the inputs alone (RoPE tables, sizes) move as little as possible.

Tied embeddings: export names the one table model.output.weight for both readers; the lookup stays
in stage 0 and the head in the last stage, and the split graph hands the one get_attr to both
submodules (StagePlan.weights gives it to both stages; drop_other_stages keeps it on both ranks). The result
is a GraphModule calling submod_0 .. submod_{n-1} in order (runs as is, in one process);
graphopt.distributed.pipeline_run runs it with micro-batches on several devices or ranks.
"""
from __future__ import annotations

import copy
import re

from torch.fx import GraphModule
from torch.fx.passes.split_module import split_module

from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, after, register_pass

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def node_stages(gm: GraphModule, n_stages: int, n_layers: int) -> dict:
    """node -> stage for every call_function / call_module node of gm."""
    def weight_stage(target: str) -> int:
        m = _LAYER.search(target)
        if m:
            return int(m.group(1)) * n_stages // n_layers
        name = target.rsplit(".", 1)[0].split(".")[-1] if "." in target else target
        return n_stages - 1 if name == "norm" else 0  # output / tok_embeddings: maybe one tied table

    lb = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            lb[n] = 0
        elif n.op == "get_attr":
            lb[n] = weight_stage(n.target)
        elif n.op != "output":
            lb[n] = max([lb[a] for a in n.all_input_nodes] + [0])
    stage = {}
    for n in reversed(gm.graph.nodes):
        if n.op in ("call_function", "call_method", "call_module"):
            users = [stage[u] for u in n.users if u in stage]
            # outputs of the graph belong to the last stage; otherwise run at the first stage needing it
            s = min(users) if users and all(u.op != "output" for u in n.users) else None
            stage[n] = max(lb[n], s) if s is not None else (n_stages - 1 if any(u.op == "output" for u in n.users)
                                                             else lb[n])
    return stage


def split_stages(gm: GraphModule, n_stages: int, n_layers: int | None = None) -> GraphModule:
    gm = copy.deepcopy(gm)
    for n in list(gm.graph.nodes):  # export's input guard: a call_module split_module cannot place well
        if n.op == "call_module" and n.target == "_guards_fn":
            gm.graph.erase_node(n)
    gm.recompile()
    if n_layers is None:
        idx = [int(m.group(1)) for n in gm.graph.nodes if n.op == "get_attr" for m in [_LAYER.search(n.target)] if m]
        if not idx:
            raise PassError("pipeline_split: no layers.N weights in the graph to split at")
        n_layers = max(idx) + 1
    if not 1 <= n_stages <= n_layers:
        raise PassError(f"pipeline_split: n_stages {n_stages} must be between 1 and n_layers {n_layers}")
    stages = node_stages(gm, n_stages, n_layers)
    split = split_module(gm, None, lambda n: stages[n], keep_original_order=True)
    split.graph._codegen = copy.deepcopy(gm.graph._codegen)  # export's pytree in/out handling
    split.recompile()
    got = sorted(int(name[len("submod_"):]) for name, _ in split.named_children() if name.startswith("submod_"))
    assert got == list(range(n_stages)), f"pipeline_split made stages {got}, wanted 0..{n_stages - 1}"
    split.meta["pipeline_stages"] = n_stages
    for key, value in gm.meta.items():  # what earlier passes recorded (tp_shards: where merged weights come from)
        split.meta.setdefault(key, value)
    return split


@register_pass("pipeline_split", "cut the graph at transformer-layer boundaries into n_stages submodules "
               "(split_module); run with graphopt.distributed.pipeline_run",
               options={"n_stages": PassOption(int, 0, "number of stages (0: ctx.world_size)", min=0)},
               shards="pipeline",
               order=[after("*", "it wraps the graph's nodes into per-stage submodules that other passes do not "
                                 "look into")])
def pipeline_split(gm: GraphModule, ctx: PassContext) -> PassResult:
    n = ctx.options.get("n_stages") or ctx.world_size
    if n <= 1:
        return PassResult(gm, False, {"matches": 0})
    n_layers = ctx.model_args.n_layers if ctx.model_args is not None else None
    split = split_stages(gm, n, n_layers)
    return PassResult(split, True, {"matches": n, "stages": n})
