"""Run a pipeline_split graph with micro-batches: stage s on device s in one process (GPipe
fill/drain order, so on GPUs stage s works on micro-batch m while stage s+1 works on m-1), or stage
s on rank s across processes (values between stages go by isend/recv; every rank has the inputs).

Inputs are ScoreModule's (input_ids [B,T], positions [B,T], mask [B,T,T], score_idx [N], targets
[N][, doc_ids [B,T], seg_ids [B,T]]); micro-batches are groups of rows, each with the scored
positions that fall in its rows.
"""
from __future__ import annotations

import operator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.fx import GraphModule, Node

from graphopt.graph_attrs import attr, set_attr


def micro_batches(inputs: tuple, n_micro: int) -> list[tuple[tuple, Tensor]]:
    """[(micro-batch inputs, indices into the N scores it produces)] in row order. The packed
    layouts' doc_ids / seg_ids [B, T], when present after the five, are cut by rows too."""
    ids, pos, mask, score_idx, targets, *layout = inputs
    B, T = ids.shape
    n_micro = max(1, min(n_micro, B))
    out, rows = [], torch.arange(B).tensor_split(n_micro)
    for r in rows:
        b0, b1 = int(r[0]), int(r[-1]) + 1
        row = score_idx // T
        sel = ((row >= b0) & (row < b1)).nonzero().squeeze(1)
        out.append(((ids[b0:b1], pos[b0:b1], mask[b0:b1], score_idx[sel] - b0 * T, targets[sel],
                     *(t[b0:b1] for t in layout)), sel))
    return out


class StagePlan:
    """Which top-level nodes of a split graph each stage runs, and what flows between stages."""

    def __init__(self, split: GraphModule):
        self.gm = split
        nodes = list(split.graph.nodes)
        self.placeholders = [n for n in nodes if n.op == "placeholder"]
        self.output = next(n for n in nodes if n.op == "output")
        self.stage: dict[Node, int] = {}
        for n in nodes:
            if n.op == "call_module" and n.target.startswith("submod_"):
                self.stage[n] = int(n.target[len("submod_"):])
            elif n.op == "call_function" and n.target is operator.getitem and n.args[0] in self.stage:
                self.stage[n] = self.stage[n.args[0]]
        for n in nodes:  # weights live with the first stage that reads them
            if n.op == "get_attr":
                self.stage[n] = min(self.stage[u] for u in n.users)
        self.n_stages = max(self.stage.values()) + 1
        self.nodes_of = [[n for n in nodes if self.stage.get(n) == s] for s in range(self.n_stages)]

    def consumers(self, n: Node) -> list[int]:
        """Later stages that read value n (placeholders are local to every stage)."""
        return sorted({self.stage[u] for u in n.users if u in self.stage and self.stage[u] != self.stage[n]})

    def sends(self, s: int) -> list[tuple[Node, int]]:
        """(value, consuming stage) that stage s sends, in node order."""
        return [(n, q) for n in self.nodes_of[s] if n.op != "get_attr" for q in self.consumers(n)]

    def recvs(self, s: int) -> list[tuple[Node, int]]:
        """(value, producing stage) that stage s needs, in node order."""
        need = []
        for n in self.nodes_of[s]:
            for a in n.all_input_nodes:
                if a in self.stage and self.stage[a] != s and a.op != "get_attr" and (a, self.stage[a]) not in need:
                    need.append((a, self.stage[a]))
        order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        return sorted(need, key=lambda x: order[x[0]])

    def weights(self, s: int, device) -> dict[Node, Tensor]:
        out = {}
        for n in self.nodes_of[s]:
            if n.op == "get_attr":
                obj = self.gm
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                out[n] = obj.detach().to(device)
        for n in self.nodes_of[s]:  # weights first read by an earlier stage but also used here (tied)
            for a in n.all_input_nodes:
                if a.op == "get_attr" and a not in out:
                    obj = self.gm
                    for part in a.target.split("."):
                        obj = getattr(obj, part)
                    out[a] = obj.detach().to(device)
        return out

    def run_stage(self, s: int, env: dict, weights: dict, device) -> None:
        def get(a):
            if not isinstance(a, Node):
                return a
            v = weights[a] if a in weights else env[a]
            return v.to(device) if isinstance(v, Tensor) and v.device != torch.device(device) else v
        for n in self.nodes_of[s]:
            if n.op == "get_attr":
                continue
            args = torch.fx.node.map_aggregate(n.args, get)
            if n.op == "call_module":
                env[n] = getattr(self.gm, n.target)(*args)
            else:
                env[n] = n.target(*args)

    def result(self, env: dict):
        out = torch.fx.node.map_aggregate(self.output.args[0], lambda a: env[a] if isinstance(a, Node) else a)
        return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


def run_pipeline(split: GraphModule, inputs: tuple, n_micro: int = 2, devices=None) -> Tensor:
    """One process: stage s on devices[s] (default: all on CPU). Returns the [N] scores."""
    plan = StagePlan(split)
    devices = [torch.device(d) for d in (devices or ["cpu"] * plan.n_stages)]
    assert len(devices) == plan.n_stages, f"{plan.n_stages} stages, {len(devices)} devices"
    weights = [plan.weights(s, devices[s]) for s in range(plan.n_stages)]
    mbs = micro_batches(inputs, n_micro)
    envs = [dict(zip(plan.placeholders, mb)) for mb, _ in mbs]
    with torch.no_grad():
        for t in range(len(mbs) + plan.n_stages - 1):  # GPipe: at tick t stage s runs micro-batch t - s
            for s in range(plan.n_stages):
                if 0 <= t - s < len(mbs):
                    plan.run_stage(s, envs[t - s], weights[s], devices[s])
    return _assemble(plan, envs, mbs, inputs[3].shape[0])


def _assemble(plan: StagePlan, envs, mbs, n: int) -> Tensor:
    parts = [plan.result(env) for env in envs]
    out = torch.empty(n, dtype=parts[0].dtype, device=parts[0].device)
    for part, (_, sel) in zip(parts, mbs):
        out[sel.to(out.device)] = part
    return out


# ------------------------------------------------------------------ across processes (stage = rank)

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool,
           torch.uint8, torch.int8]
_HEADER = 12  # kind, dtype, ndim, up to 9 sizes


def _send(v, dst: int, pending: list) -> None:
    if isinstance(v, Tensor):
        assert v.dim() <= _HEADER - 3, f"pipeline: cannot send a {v.dim()}-d tensor"
        h = [0, _DTYPES.index(v.dtype), v.dim(), *v.shape]
        payload = v.detach().contiguous()
        payload = payload.view(torch.uint8) if v.dtype == torch.bool else payload
    elif isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool):
        h, payload = [1, int(v), 0], None
    else:
        raise TypeError(f"pipeline: cannot send a {type(v).__name__} between stages")
    header = torch.tensor(h + [0] * (_HEADER - len(h)), dtype=torch.int64)
    pending.append((dist.isend(header, dst), header))
    if payload is not None:
        pending.append((dist.isend(payload, dst), payload))


def _recv(src: int, device):
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    dist.recv(header, src)
    kind, a, ndim = header[:3].tolist()
    if kind == 1:
        return a
    dtype = _DTYPES[a]
    shape = header[3:3 + ndim].tolist()
    buf = torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype, device=device)
    dist.recv(buf, src)
    return buf.view(torch.bool) if dtype == torch.bool else buf


def drop_other_stages(split: GraphModule, rank: int) -> list[str]:
    """Free the weights of the stages this rank does not run (each rank then holds ~1/n of them): each
    becomes an empty placeholder of its dtype (real, so gm.to(device) still works on a graph whose
    weights were never loaded). A weight read by this rank's stage stays, also when another stage
    reads it too (a tied embedding table: stage 0's lookup and the last stage's head). Returns the
    targets freed."""
    mine = stage_weight_targets(split, rank)
    keep = {id(attr(split, t)) for t in mine}  # a tied tensor under another name stays too
    freed = []
    for target in sorted({n.target for n in split.graph.nodes if n.op == "get_attr"} - mine):
        t = attr(split, target)
        if isinstance(t, Tensor) and id(t) not in keep and t.numel():
            set_attr(split, target, torch.empty(0, dtype=t.dtype, device="cpu" if t.is_meta else t.device))
            freed.append(target)
    return freed


def stage_weight_targets(split: GraphModule, rank: int) -> set[str]:
    """The get_attr targets stage `rank` reads (its own and those it shares with other stages)."""
    plan = StagePlan(split)
    return {n.target for n in plan.nodes_of[rank] if n.op == "get_attr"} | {
        a.target for n in plan.nodes_of[rank] for a in n.all_input_nodes if a.op == "get_attr"}


def run_pipeline_rank(split: GraphModule, inputs: tuple, n_micro: int = 2) -> Tensor:
    """Across processes: this rank runs stage `rank` (its rank in the pipeline group: the "pp"
    sub-group of the active device mesh, else the default group) of a split with that group's size
    stages; every rank passes the same inputs and gets the [N] scores (broadcast from the last stage)."""
    from graphopt.distributed.mesh import global_rank, shard_group
    group = shard_group("pp")
    rank, ws = dist.get_rank(group), dist.get_world_size(group)
    to_global = lambda r: global_rank(group, r)  # noqa: E731 (send / recv / broadcast take global ranks)
    plan = StagePlan(split)
    assert plan.n_stages == ws, f"split has {plan.n_stages} stages for a pipeline group of {ws}"
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    weights = plan.weights(rank, device)
    mbs = micro_batches(tuple(t.to(device) for t in inputs), n_micro)
    envs, pending = [], []
    recvs, sends = plan.recvs(rank), plan.sends(rank)
    with torch.no_grad():
        for mb, _ in mbs:
            env = dict(zip(plan.placeholders, mb))
            for node, src in recvs:
                env[node] = _recv(to_global(src), device)
            plan.run_stage(rank, env, weights, device)
            for node, dst in sends:
                _send(env[node], to_global(dst), pending)
            envs.append(env)
        for work, _ in pending:
            work.wait()
    n = inputs[3].shape[0]
    out = _assemble(plan, envs, mbs, n) if rank == ws - 1 else torch.empty(n, dtype=torch.float32, device=device)
    dist.broadcast(out, src=to_global(ws - 1), group=group)
    return out


class StagePerRank:
    """An optimize() result whose graph pipeline_split cut: calling it runs this rank's stage over the
    micro-batches (every rank gets the [N] scores); graph / module / records as the result's."""

    def __init__(self, opt, n_micro: int):
        stages = opt.graph.meta.get("pipeline_stages", 1)
        if stages != n_micro:
            raise ValueError(f"pipeline_split made {stages} stages for world_size {n_micro}: one stage per rank "
                             f"needs n_stages 0 (= world_size) or {n_micro}")
        self.opt, self.n_micro = opt, n_micro
        self.graph, self.module, self.records = opt.graph, opt.module, opt.records

    def __call__(self, *inputs):
        return run_pipeline_rank(self.graph, inputs, self.n_micro)
