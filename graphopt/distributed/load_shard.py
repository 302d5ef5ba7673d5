"""Fill a tensor_parallel-rewritten graph with this rank's weights straight from a checkpoint,
reading only what the rank holds.

Typical flow (peak host memory ~ one shard per rank):
    with torch.device("meta"): model = Transformer(args)          # no weights anywhere
    gm = capture(ScoreModule(model), example_inputs)               # meta weights as get_attr
    gm, _ = run_passes(gm, [("tensor_parallel", {...})], ctx)      # slices meta tensors (free)
    load_shard(gm, ckpt_dir, rank, world_size, args)               # real shards in place

Meta checkpoints (consolidated.NN.pth): files are opened lazily (torch.load mmap=True,
weights_only=True) and only when a needed slice lies in them; when the shard count equals the world
size and the layout matches Meta's (vocab_parallel + embedding_parallel, kv heads not replicated),
rank r opens consolidated.{r:02d}.pth only and its tensors are used as they are (memory-mapped, no
copy). Safetensors (Hugging Face directory or one file with Meta key names): every tensor is read
as a lazy slice (safe_open(...).get_slice), HF q/k rows un-permuted per local head.

Tied embeddings: the graph holds the table (whole, or tensor_parallel's one vocab slice) as one
tensor under several names (export keeps model.tok_embeddings.weight unread next to
model.output.weight); it is read once and every name holding it gets the one loaded tensor, so the
tie survives and no name is left on the meta device. A checkpoint without output.weight (tied) gives
the head's rows from tok_embeddings.weight.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.fx import GraphModule

from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.meta import load_pth, meta_shard_paths, meta_split_dim
from graphopt.graph_attrs import attr, replace_tensor, targets_holding
from graphopt.model.args import ModelArgs
from graphopt.model.llama import model_rope_tables

Piece = tuple[int, int, int] | None  # (dim, start, stop) of the full tensor; None = all of it


class _MetaShards:
    def __init__(self, ckpt_dir: Path, rank: int):
        self.paths = meta_shard_paths(ckpt_dir)
        self.rank = rank
        self.state: dict[int, dict[str, Tensor]] = {}
        self.opened: list[str] = []

    def _file(self, i: int) -> dict[str, Tensor]:
        if i not in self.state:
            self.state[i] = load_pth(self.paths[i])
            self.opened.append(self.paths[i].name)
        return self.state[i]

    def has(self, key: str) -> bool:
        return key in self._file(min(self.rank, len(self.paths) - 1))

    def read(self, key: str, piece: Piece) -> Tensor:
        n = len(self.paths)
        home = min(self.rank, n - 1)
        md = meta_split_dim(key)
        if md is None:  # replicated in every file: read this rank's own
            return _narrow(self._file(home)[key], piece)
        chunk = self._file(home)[key].shape[md]
        if piece is None:
            return torch.cat([self._file(i)[key] for i in range(n)], md)
        dim, a, b = piece
        if dim != md:  # cut across Meta's split: a slice of every file
            return torch.cat([self._file(i)[key].narrow(dim, a, b - a) for i in range(n)], md)
        parts = []
        for i in range(a // chunk, (b - 1) // chunk + 1):
            lo, hi = max(a, i * chunk) - i * chunk, min(b, (i + 1) * chunk) - i * chunk
            t = self._file(i)[key]
            parts.append(t if (lo, hi) == (0, chunk) else t.narrow(md, lo, hi - lo))
        return parts[0] if len(parts) == 1 else torch.cat(parts, md)


class _Safetensors:
    def __init__(self, ckpt_dir: Path, args: ModelArgs):
        from safetensors import safe_open
        from graphopt.checkpoints.hf import hf_to_meta_key
        files = [ckpt_dir] if ckpt_dir.is_file() else sorted(ckpt_dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{ckpt_dir}: no .safetensors files")
        self.args, self.where, self.opened = args, {}, [p.name for p in files]
        self.handles = [safe_open(str(p), "pt") for p in files]
        for h, p in zip(self.handles, files):
            for k in h.keys():
                mk = hf_to_meta_key(k)
                if mk is not None:
                    self.where[mk] = (h, k, mk != k)  # renamed from HF: q/k rows are rotate_half-permuted

    def has(self, key: str) -> bool:
        return key in self.where

    def read(self, key: str, piece: Piece) -> Tensor:
        h, k, from_hf = self.where[key]
        sl = h.get_slice(k)
        shape = sl.get_shape()
        idx = [slice(None)] * len(shape)
        if piece is not None:
            idx[piece[0]] = slice(piece[1], piece[2])
        t = sl[tuple(idx)]  # reads only these rows / columns
        role = key.split(".")[-2] if key.startswith("layers.") else None
        from graphopt.checkpoints.hf import QK_PERMUTED, unpermute_qk
        if from_hf and role in QK_PERMUTED:  # per-head permutation: a head-aligned slice un-permutes alone
            out = torch.empty_like(t)
            unpermute_qk(out, t, t.shape[0] // self.args.head_dim)
            t = out
        return t


def _narrow(t: Tensor, piece: Piece) -> Tensor:
    return t if piece is None else t.narrow(piece[0], piece[1], piece[2] - piece[1])


def load_shard(gm: GraphModule, ckpt_dir: str | Path, rank: int, world_size: int, args: ModelArgs) -> dict:
    """Fill every parameter/buffer that gm's get_attr nodes read and that is still on the meta device
    with this rank's slice (as recorded by the tensor_parallel pass in gm.meta["tp_shards"];
    unrecorded ones in full). Real tensors are left as they are (pipeline_run.drop_other_stages puts
    empty ones where another pipeline stage's weights were). Returns stats: files_opened,
    bytes_loaded (read from the checkpoint, each tensor once; RoPE tables are recomputed), tensors,
    dropped_unread (meta names nothing reads, deleted)."""
    ckpt = Path(ckpt_dir)
    if ckpt.is_dir() and any(ckpt.glob("consolidated.*.pth")):
        src = _MetaShards(ckpt, rank)
    elif ckpt.suffix == ".safetensors" or (ckpt.is_dir() and any(ckpt.glob("*.safetensors"))):
        src = _Safetensors(ckpt, args)
    else:
        raise CheckpointError(f"{ckpt}: expected a Meta checkpoint (consolidated.NN.pth) or .safetensors")
    shards = gm.meta.get("tp_shards", {})
    tied = not src.has("output.weight")
    total, n, done = 0, 0, set()
    for target in sorted({nd.target for nd in gm.graph.nodes if nd.op == "get_attr"}):
        cur = attr(gm, target)
        if not isinstance(cur, Tensor) or not cur.is_meta or id(cur) in done:  # real already (a pipeline rank's
            continue  # placeholders for other stages' weights), or tied: already loaded under another name
        name = target[len("model."):] if target.startswith("model.") else target
        read = name not in ("rope_cos", "rope_sin")
        if not read:  # non-persistent: recompute
            cos, sin = model_rope_tables(args, cur.shape[0])
            new = cos if name == "rope_cos" else sin
        else:
            parts = shards.get(target) or _recorded_under_another_name(gm, cur, shards) or [(name, None)]
            tensors = []
            for key, piece in parts:
                key = "tok_embeddings.weight" if key == "output.weight" and tied else key
                if not src.has(key):
                    raise CheckpointError(f"{ckpt}: no tensor {key!r} (needed for graph attribute {target!r})")
                tensors.append(src.read(key, piece))
            new = tensors[0] if len(tensors) == 1 else torch.cat(tensors, 0)
        if tuple(new.shape) != tuple(cur.shape):
            raise CheckpointError(f"{ckpt}: {target!r} for rank {rank}/{world_size} has shape {list(new.shape)}, "
                                  f"the graph expects {list(cur.shape)} (params.json / world size mismatch?)")
        new = new.to(cur.dtype) if new.dtype != cur.dtype else new
        done.add(id(cur))
        replace_tensor(gm, cur, new)  # every name holding it: one tensor, tied names included
        total += new.numel() * new.element_size() if read else 0
        n += 1
    dropped = _drop_unread_meta(gm)
    return {"files_opened": list(src.opened), "bytes_loaded": total, "tensors": n, "dropped_unread": dropped}


def _recorded_under_another_name(gm: GraphModule, t: Tensor, shards: dict) -> list | None:
    """tensor_parallel records a cut under the name it gave it; another name of the same tensor reads it too."""
    return next((shards[name] for name in targets_holding(gm, t) if name in shards), None)


def _drop_unread_meta(gm: GraphModule) -> list[str]:
    """Parameters / buffers still on the meta device are read by no get_attr (every read one was just
    filled): names a pass left behind. Dropped, so that gm.to(device) has nothing without data to copy."""
    dropped = []
    for prefix, module in gm.named_modules(remove_duplicate=False):
        for slots in (module._parameters, module._buffers):
            for leaf in [k for k, t in slots.items() if t is not None and t.is_meta]:
                del slots[leaf]
                dropped.append(f"{prefix}.{leaf}" if prefix else leaf)
    return dropped


def retarget_device(gm: GraphModule, device) -> int:
    """A graph captured from a meta-device model (no weights in memory) records device=meta in some
    nodes (_assert_tensor_metadata, factory ops); point them at `device`. Returns nodes changed."""
    device = torch.device(device)
    fix = lambda a: device if isinstance(a, torch.device) and a.type == "meta" else a
    changed = 0
    for n in gm.graph.nodes:
        args, kwargs = torch.fx.node.map_aggregate(n.args, fix), torch.fx.node.map_aggregate(n.kwargs, fix)
        if args != n.args or kwargs != n.kwargs:
            n.args, n.kwargs = args, kwargs
            changed += 1
    gm.recompile()
    return changed
