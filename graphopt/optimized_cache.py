"""Optimised graphs kept across runs. A second optimize() of a model of the same structure with the
same pipeline, inputs of the same shape class, the same torch and graphopt code and the same CPU
loads what the first one's capture and passes made instead of doing them again; every weight is
made again from the module's own (the checkpoint is their source: nothing of a weight is stored,
packed oneDNN weights are rebuilt).

    key = plan_key(module, example_inputs, specs, ctx)
    plan = load_plan(key, module)       # None: no entry, or one that cannot be used (one line says why)
    store_plan(key, plan)               # after graphopt.optimize_blocks.plan_blocks on a miss

The key is a sha256 over: the pipeline (every pass with its options), the module's structure (every
submodule's class and plain attributes, every parameter and buffer's name, shape, dtype, device and
which are one tensor), the inputs' shape class (dtype, device, rank, the static sizes, whether a
dynamic one is 1), the model's args, rank and world size, torch's version and build, the CPU's
capability, and a digest of graphopt's source (the package and the pass library).
The entry (kind "optimized-graph" in graphopt's cache folder) is JSON: the graphs and weight
programs as graphopt.graph_serial writes them, the pass records, and the constants as safetensors.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.fx import GraphModule

from graphopt import cache_store as store
from graphopt.block_capture import BlockCapture
from graphopt.graph_capture import INPUT_DIMS
from graphopt.graph_serial import (graph_from_json, graph_to_json, pack_tensors, program_from_json, program_to_json,
                                   unpack_tensors)
from graphopt.optimize_blocks import BlockPlan, layer_sources
from graphopt.pass_manager import PassRecord
from graphopt.pipeline import PassContext, PassSpec

KIND = "optimized-graph"
FORMAT = 1
_PLAIN = (type(None), bool, int, float, str)


@functools.cache
def source_digest() -> str:
    """sha256 over graphopt's own source files and its pass library's (a code change is a new key)."""
    h = hashlib.sha256()
    for root in [Path(__file__).parent, Path(__file__).parent / "passes"]:  # (passes/: the library, linked in)
        for path in sorted(root.resolve().rglob("*.py")):
            h.update(str(path.relative_to(root.resolve())).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _plain(value) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(_plain(v) for v in value))


def module_structure(module: nn.Module) -> list:
    out, first_name = [], {}
    for prefix, m in module.named_modules(remove_duplicate=False):
        attrs = sorted((k, repr(v)) for k, v in vars(m).items() if not k.startswith("_") and _plain(v))
        out.append(["module", prefix, type(m).__module__ + "." + type(m).__qualname__, attrs])
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        out.append(["tensor", name, list(t.shape), str(t.dtype), t.device.type, first_name.setdefault(id(t), name)])
    return out


def input_class(module: nn.Module, example_inputs: tuple) -> list:
    names = list(inspect.signature(module.forward).parameters)[:len(example_inputs)]
    out = []
    for name, x in zip(names, example_inputs):
        if not isinstance(x, torch.Tensor):
            out.append([name, repr(x)])
            continue
        dynamic = INPUT_DIMS.get(name, {})
        sizes = [("1" if s == 1 else "n") if d in dynamic else s for d, s in enumerate(x.shape)]
        out.append([name, str(x.dtype), x.device.type, sizes])
    return out


def plan_key(module: nn.Module, example_inputs: tuple, specs: list[PassSpec], ctx: PassContext) -> str:
    args = ctx.model_args
    parts = {
        "format": FORMAT, "source": source_digest(),
        "torch": torch.__version__, "torch_build": torch.version.git_version,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "pipeline": [s.to_dict() for s in specs],
        "module": module_structure(module), "inputs": input_class(module, example_inputs),
        "model_args": args.to_dict() if hasattr(args, "to_dict") else repr(args),
        "rank": ctx.rank, "world_size": ctx.world_size,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


# ------------------------------------------------------------------------------------ writing

def _kinds(gm: GraphModule) -> dict[str, str]:
    params = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    return {n.target: "parameter" if n.target in params else "buffer" for n in gm.graph.find_nodes(op="get_attr")}


def plan_to_json(plan: BlockPlan) -> dict:
    constants = {}

    def part(gm, program, tag):
        prog, consts = program_to_json(program)
        constants.update({f"{tag}/{k}": v for k, v in consts.items()})
        return {"graph": graph_to_json(gm), "program": prog, "kinds": _kinds(gm)}
    return {
        "format": FORMAT, "layers_name": plan.layers_name, "outer": part(plan.outer, plan.outer_program, "outer"),
        "blocks": [{**part(b.gm, b.program, f"block{i}"), "prefix": b.prefix, "layers": b.layers}
                   for i, b in enumerate(plan.blocks)],
        "records": [json.loads(json.dumps(asdict(r), default=repr)) for r in plan.records],
        "split": {k: v for k, v in plan.split.items() if k in ("layers", "distinct_blocks")},
        "constants": pack_tensors(constants),
    }


def store_plan(key: str, plan: BlockPlan, log=None) -> bool:
    """Keep the plan (before assemble() fills the other layers). False when some part of it cannot be
    written as graph_serial writes graphs (it is then simply not kept)."""
    from graphopt.graph_serial import NotSerialisable
    try:
        data = json.dumps(plan_to_json(plan)).encode()
    except NotSerialisable as e:
        (log or store.warn)(f"graphopt: this optimised graph is not kept across runs ({e})")
        return False
    try:
        store.put(KIND, key, data)
    except OSError as e:  # a cache folder that cannot be written: the next run captures again
        (log or store.warn)(f"graphopt: could not keep the optimised graph in the cache folder ({e})")
        return False
    return True


# ------------------------------------------------------------------------------------ reading

def _module_with(weights: dict, kinds: dict) -> nn.Module:
    root = nn.Module()
    for target, tensor in weights.items():
        *path, leaf = target.split(".")
        owner = root
        for p in path:
            if not hasattr(owner, p):
                owner.add_module(p, nn.Module())
            owner = getattr(owner, p)
        if kinds.get(target) == "parameter" and not tensor.is_mkldnn:
            owner.register_parameter(leaf, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, False))
        else:
            owner.register_buffer(leaf, tensor)
    return root


def plan_from_json(data: dict, module: nn.Module) -> BlockPlan:
    """The plan, its outer graph's and each block's first layer's weights made from `module`'s."""
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
    constants = unpack_tensors(data["constants"])

    def part(d, tag, sources):
        program = program_from_json(d["program"], {k[len(tag) + 1:]: v for k, v in constants.items()
                                                   if k.startswith(tag + "/")})
        weights = program.build(sources)
        return GraphModule(_module_with(weights, d["kinds"]), graph_from_json(d["graph"])), program

    outer_sources = {n: t for n, t in [*module.named_parameters(remove_duplicate=False),
                                       *module.named_buffers(remove_duplicate=False)]}
    outer, outer_program = part(data["outer"], "outer", outer_sources)
    layers = module.get_submodule(data["layers_name"])
    blocks = []
    for i, d in enumerate(data["blocks"]):
        gm, program = part(d, f"block{i}", layer_sources(layers[d["layers"][0]], d["prefix"]))
        blocks.append(BlockCapture(gm, d["prefix"], list(d["layers"]), {}, program))
    records = [PassRecord(**r) for r in data["records"]]
    return BlockPlan(outer, outer_program, data["layers_name"], blocks, records, dict(data["split"]))


def load_plan(key: str, module: nn.Module, log=None) -> BlockPlan | None:
    """The kept plan for `key` with its first weights made from `module`'s; None when there is none,
    or when it cannot be read (then one line says so, and the caller captures afresh and keeps anew)."""
    raw = store.get(KIND, key, log=log)
    if raw is None:
        return None
    t0 = time.perf_counter()
    try:
        plan = plan_from_json(json.loads(raw), module)
    except Exception as e:  # noqa: BLE001 - anything wrong with an entry makes it a miss, never an error
        (log or store.warn)(f"graphopt: ignored the kept optimised graph {key[:16]} ({type(e).__name__}: {e}); "
                             f"capturing afresh")
        return None
    plan.split.update(capture_s=0.0, passes_s=0.0, load_s=time.perf_counter() - t0)
    return plan
