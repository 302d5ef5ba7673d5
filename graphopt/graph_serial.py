"""Optimised graphs and weight programs as JSON, so they can be kept across runs without pickles.

    data = graph_to_json(gm)        ->  graph, codegen = graph_from_json(data)
    data = program_to_json(prog)    ->  prog = program_from_json(data)

A graph is its nodes in order: op, name, target, args and kwargs. A call's target is named, never
stored as code: an operator overload as torch.ops.<namespace>.<name>.<overload>, a Python function
by module and name (only torch.*, operator.* and math.*: anything else is not written). Arguments
are JSON values, tagged where JSON has no type of their own (nodes, tuples, dtypes, devices, slices,
inf / nan). export's calling convention (its input and output pytree specs) is kept; its input
guard (`_guards_fn`, a module of its own) is not: a cached graph runs without it. Of the fake values,
only the inputs' are kept (dtype, device, sizes, symbols: rebuilt in a fresh fake mode). A weight
program's steps are named the same way; its constants go with it as safetensors bytes.
Anything this cannot write raises NotSerialisable (the caller keeps the graph uncached).
"""
from __future__ import annotations

import base64
import math
import operator

import torch
from torch.fx import Graph, GraphModule, Node
from torch.fx.graph import CodeGen, _PyTreeCodeGen, _PyTreeInfo
from torch.utils._pytree import treespec_dumps, treespec_loads

from graphopt.weight_program import Ref, Step, WeightProgram

_MODULES = {"torch": torch, "operator": operator, "math": math}
_GUARDS = "_guards_fn"


class NotSerialisable(ValueError):
    """The graph or program holds something graph_serial does not write (the message says what)."""


# ------------------------------------------------------------------------------------ targets

def name_of(fn) -> str:
    if isinstance(fn, torch._ops.OpOverload):
        namespace, op = fn._schema.name.split("::")
        return f"torch.ops.{namespace}.{op}.{fn._overloadname}"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return f"torch.ops.{fn._qualified_op_name.replace('::', '.')}"
    plain = getattr(fn, "__name__", "")
    name = next((f"{m}.{plain}" for m in ("operator", "math") if getattr(_MODULES[m], plain, None) is fn), None)
    name = name or (torch.overrides.resolve_name(fn) if callable(fn) else None)
    if name is None:
        module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
        name = f"{module}.{qual}" if module and qual else None
    if name is None or name.split(".")[0] not in _MODULES or resolve(name) is not fn:
        raise NotSerialisable(f"cannot name the callable {fn!r}")
    return name


def resolve(name: str):
    """A dotted name under torch / operator / math -> the object (nothing else is ever looked up)."""
    head, *rest = name.split(".")
    if head not in _MODULES:
        raise NotSerialisable(f"{name!r} is not under {', '.join(_MODULES)}")
    obj = _MODULES[head]
    for part in rest:
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------ values

def encode(value, node_names: dict | None = None):
    """A node argument (or a step argument) as a JSON value."""
    if isinstance(value, Node):
        return {"node": value.name}
    if isinstance(value, Ref):
        return {"ref": value.index}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        items = [encode(v) for v in value]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotSerialisable(f"a dict with non-string keys: {list(value)[:3]}")
        return {"dict": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, (torch.memory_format, torch.layout)):
        return {"torch": str(value).removeprefix("torch.")}
    if isinstance(value, slice):
        return {"slice": [encode(value.start), encode(value.stop), encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    raise NotSerialisable(f"cannot write the argument {value!r} ({type(value).__name__})")


def decode(value, nodes: dict | None = None):
    if isinstance(value, list):
        return [decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, inner), = value.items()
    if tag == "node":
        return nodes[inner]
    if tag == "ref":
        return Ref(inner)
    if tag == "float":
        return float(inner)
    if tag == "tuple":
        return tuple(decode(v, nodes) for v in inner)
    if tag == "dict":
        return {k: decode(v, nodes) for k, v in inner.items()}
    if tag == "dtype":
        dtype = getattr(torch, inner)
        assert isinstance(dtype, torch.dtype), inner
        return dtype
    if tag == "device":
        return torch.device(inner)
    if tag == "torch":
        out = getattr(torch, inner)
        assert isinstance(out, (torch.memory_format, torch.layout)), inner
        return out
    if tag == "slice":
        return slice(*(decode(v, nodes) for v in inner))
    if tag == "ellipsis":
        return Ellipsis
    raise ValueError(f"unknown tag {tag!r}")


# ------------------------------------------------------------------------------------ graphs

def graph_to_json(gm: GraphModule) -> dict:
    nodes = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target == _GUARDS:
            continue
        if n.op == "call_module":
            raise NotSerialisable(f"node {n.name} calls the submodule {n.target}")
        target = name_of(n.target) if n.op == "call_function" else n.target
        nodes.append({"op": n.op, "name": n.name, "target": target, "args": encode(n.args),
                      "kwargs": encode(n.kwargs)})
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor):
            nodes[-1]["val"] = _describe(n.meta["val"])
    codegen = gm.graph._codegen
    spec = None
    if isinstance(codegen, _PyTreeCodeGen):
        info = codegen.pytree_info
        spec = {"orig_args": list(info.orig_args),
                "in_spec": treespec_dumps(info.in_spec) if info.in_spec is not None else None,
                "out_spec": treespec_dumps(info.out_spec) if info.out_spec is not None else None}
    return {"nodes": nodes, "pytree": spec}


def _describe(v: torch.Tensor) -> dict:
    """An input's fake value: dtype, device, and per dim its size or (its symbol, the example size)."""
    sizes = [s if isinstance(s, int) else [str(s.node.expr), int(s.node.hint)] for s in v.shape]
    return {"dtype": str(v.dtype).removeprefix("torch."), "device": str(v.device), "shape": sizes}


def _input_values(described: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Values for the inputs' meta["val"]: meta-device tensors of the dtype and the sizes they had when
    the graph was captured (a symbolic size at its example), so that what reads an optimised graph's
    inputs (their dtypes, their static sizes: KVLayout.of_graph) reads them as a fresh graph has them.
    Not fake tensors: a fake mode or a shape environment imports torch._dynamo (~0.5 s) that a run from
    a kept graph needs for nothing else, and nothing propagates shapes through a kept graph (a compile
    traces it afresh)."""
    out = {}
    for name, d in described.items():
        dtype = getattr(torch, d["dtype"])
        assert isinstance(dtype, torch.dtype), d["dtype"]
        out[name] = torch.empty([s[1] if isinstance(s, list) else s for s in d["shape"]], dtype=dtype, device="meta")
    return out


def graph_from_json(data: dict) -> Graph:
    """The Graph (no module: get_attr targets are filled by whoever builds the GraphModule). The inputs
    get values again (_input_values); no other node has one."""
    g = Graph()
    nodes: dict[str, Node] = {}
    try:
        fakes = _input_values({d["name"]: d["val"] for d in data["nodes"] if "val" in d})
    except Exception:  # noqa: BLE001 - sizes a fresh shape environment will not take: inputs without values
        fakes = {}
    for d in data["nodes"]:
        args, kwargs = decode(d["args"], nodes), decode(d["kwargs"], nodes)
        args = tuple(args) if isinstance(args, list) else args
        op = d["op"]
        if op == "placeholder":
            node = g.placeholder(d["target"])
        elif op == "get_attr":
            node = g.get_attr(d["target"])
        elif op == "call_function":
            node = g.call_function(resolve(d["target"]), args, kwargs)
        elif op == "call_method":
            node = g.call_method(d["target"], args, kwargs)
        elif op == "output":
            node = g.output(args[0])
        else:
            raise ValueError(f"node {d['name']}: op {op!r} is not read back")
        node._rename(d["name"])  # (through the graph's namespace: later nodes get other names)
        if d["name"] in fakes:
            node.meta["val"] = fakes[d["name"]]
        nodes[d["name"]] = node
    spec = data.get("pytree")
    if spec is not None:
        g._codegen = _PyTreeCodeGen(_PyTreeInfo(
            spec["orig_args"], treespec_loads(spec["in_spec"]) if spec["in_spec"] else None,
            treespec_loads(spec["out_spec"]) if spec["out_spec"] else None))
    else:
        g._codegen = CodeGen()
    return g


# ------------------------------------------------------------------------------------ programs

def program_to_json(program: WeightProgram) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (the program as JSON, its constant tensors by target: stored with safetensors)."""
    targets, constants = {}, {}
    for target, (kind, x) in program.targets.items():
        if kind == "constant":
            if x.is_mkldnn or x.layout != torch.strided:
                raise NotSerialisable(f"the constant {target} is an opaque tensor")
            constants[target] = x.detach().contiguous()
            targets[target] = [kind, None]
        else:
            targets[target] = [kind, x]
    steps = [{"func": name_of(s.func), "args": encode(s.args), "kwargs": encode(s.kwargs), "outs": s.outs}
             for s in program.steps]
    for s in program.steps:
        for a in torch.utils._pytree.tree_leaves((s.args, s.kwargs)):
            if isinstance(a, torch.Tensor):
                raise NotSerialisable(f"a step ({name_of(s.func)}) reads a tensor that is not a weight")
    data = {"targets": targets, "steps": steps, "inputs": {str(r): n for r, n in program.inputs.items()},
            "aliases": [list(a) for a in program.aliases]}
    return data, constants


def program_from_json(data: dict, constants: dict[str, torch.Tensor]) -> WeightProgram:
    targets = {t: (kind, constants[t] if kind == "constant" else x) for t, (kind, x) in data["targets"].items()}
    steps = []
    for s in data["steps"]:
        args, kwargs = decode(s["args"]), decode(s["kwargs"])
        steps.append(Step(resolve(s["func"]), tuple(args) if isinstance(args, list) else args, kwargs, s["outs"]))
    aliases = [(a[0], a[1], a[2], tuple(a[3]), tuple(a[4])) for a in data["aliases"]]
    return WeightProgram(targets, steps, {int(r): n for r, n in data["inputs"].items()}, aliases)


def pack_tensors(tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save
    return base64.b64encode(save(tensors)).decode() if tensors else ""


def unpack_tensors(text: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load
    return load(base64.b64decode(text)) if text else {}

