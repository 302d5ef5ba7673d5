"""Worker functions run on spawned ranks by the distributed tests (module level so spawn can pickle them)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def echo_rank():
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t.item()}


# ---------------------------------------------------------------- shared helpers

# odd layouts the presets lack: 9 query heads in 3 kv groups, tied embeddings, vocab and dims divisible by 3
ODD_PRESETS = {"gqa-9-3-tied": dict(dim=72, n_layers=2, n_heads=9, n_kv_heads=3, vocab_size=513, multiple_of=32,
                                    max_seq_len=64, tie_embeddings=True)}


def model_args(preset: str):
    from graphopt.model.args import ModelArgs
    return ModelArgs(**ODD_PRESETS[preset]) if preset in ODD_PRESETS else ModelArgs.from_name(preset)


def build_score_module(preset: str, seed: int = 0, n_layers: int | None = None):
    from dataclasses import replace
    from graphopt.model.llama import Transformer, init_random_weights
    from graphopt.scoring.batch import ScoreModule
    args = model_args(preset)
    if n_layers is not None:
        args = replace(args, n_layers=n_layers)
    return args, ScoreModule(init_random_weights(Transformer(args), seed=seed).eval())


def example_batch(args, B: int = 2, T: int = 8, seed: int = 1):
    """Random tokens, causal mask, every position but the first of each row scored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, args.vocab_size, (B, T), generator=g)
    pos = torch.arange(T).expand(B, T).contiguous()
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
    score_idx = torch.tensor([b * T + t for b in range(B) for t in range(T - 1)])
    targets = ids.reshape(-1)[score_idx + 1]
    return ids, pos, mask, score_idx, targets


def capture_graph(module, inputs):
    from graphopt.graph_capture import capture
    return capture(module, inputs, method="export", dynamic=True)


def _sharded_layer_bytes(gm) -> int:
    """Bytes of the projection weights of the transformer layers (2-D tensors under layers.N; merged
    ones such as attention.wqkv_weight included; norms are 1-D)."""
    total = 0
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        if ".layers." in f".{name}" and t.dim() == 2:
            total += t.numel() * t.element_size()
    return total


def tp_worker(cases):
    """cases: [(preset, options dict, passes to run before tensor_parallel)]. Each preset is captured
    once (deep-copied per case). For each case: run the unsharded graph (reference), shard with
    tensor_parallel, run; report diffs, all-reduce counts, pass stats and parameter bytes."""
    import copy
    from graphopt.distributed.collectives import ALL_REDUCE
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    rank, ws = dist.get_rank(), dist.get_world_size()
    out, captured = [], {}
    for preset, options, before in cases:
        if preset not in captured:
            args, sm = build_score_module(preset)
            inputs = example_batch(args)
            captured[preset] = (args, sm, inputs, capture_graph(sm, inputs))
        args, sm, inputs, gm0 = captured[preset]
        gm = copy.deepcopy(gm0)
        with torch.no_grad():
            eager = sm(*inputs)
        ctx = PassContext(example_inputs=inputs, model_args=args, rank=rank, world_size=ws)
        if before:
            gm, _ = run_passes(gm, list(before), ctx)
        with torch.no_grad():
            ref = gm(*inputs)
        layer_bytes_full = _sharded_layer_bytes(gm)
        gm, recs = run_passes(gm, [("tensor_parallel", dict(options))], ctx)
        with torch.no_grad():
            got = gm(*inputs)
            # a second, differently shaped batch through the same (dynamic) sharded graph
            inputs2 = example_batch(args, B=3, T=5, seed=7)
            got2, ref2 = gm(*inputs2), sm(*inputs2)
        n_ar = sum(1 for n in gm.graph.nodes if n.target is ALL_REDUCE)
        out.append({"preset": preset, "options": dict(options), "before": [str(b) for b in before],
                    "diff": (got - ref).abs().max().item(), "diff_eager": (got - eager).abs().max().item(),
                    "diff2": (got2 - ref2).abs().max().item(), "n_all_reduce": n_ar,
                    "stats": {k: v for k, v in recs[-1].stats.items() if isinstance(v, int)},
                    "layer_bytes_full": layer_bytes_full, "layer_bytes_shard": _sharded_layer_bytes(gm),
                    "got": got.clone()})
    return out


def dtensor_score_module(preset: str):
    """The peer: the eager model sharded by torch.distributed.tensor.parallel (DTensor), gpt-fast style."""
    from graphopt.distributed.dtensor_peer import parallelize_dtensor
    args, sm = build_score_module(preset)
    parallelize_dtensor(sm.model)
    return args, sm


def tp_and_peer_worker(cases, peer_presets):
    """tp_worker on `cases`, then the DTensor peer on `peer_presets`, compared with the unsharded
    eager ScoreModule (which the tensor_parallel graphs are compared with too)."""
    results = tp_worker(cases)
    peers = []
    for preset in peer_presets:
        args, sm = dtensor_score_module(preset)
        _, ref_sm = build_score_module(preset)
        inputs = example_batch(args)
        with torch.no_grad():
            peer, ref = sm(*inputs), ref_sm(*inputs)
        peers.append({"preset": preset, "diff": (peer - ref).abs().max().item()})
    for r in results:
        r.pop("got")
    return {"tp": results, "peer": peers}


def load_shard_worker(cases):
    """cases: [(checkpoint path, tensor_parallel options)]. Capture the model on the meta device (no
    weights), shard, load_shard; record every checkpoint file torch.load / open saw, and compare
    log-probs with the eager model built with the same random weights (seed 0)."""
    import builtins
    import copy
    from graphopt.distributed.load_shard import load_shard, retarget_device
    from graphopt.model.llama import Transformer
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    from graphopt.scoring.batch import ScoreModule
    rank, ws = dist.get_rank(), dist.get_world_size()
    preset = "tiny"
    args, ref_sm = build_score_module(preset)
    inputs = example_batch(args)
    with torch.device("meta"):
        meta_sm = ScoreModule(Transformer(args)).eval()
    gm0 = capture_graph(meta_sm, tuple(t.to("meta") for t in inputs))
    retarget_device(gm0, "cpu")
    out = []
    for ckpt, options in cases:
        gm = copy.deepcopy(gm0)
        gm, _ = run_passes(gm, [("tensor_parallel", dict(options))],
                           PassContext(model_args=args, rank=rank, world_size=ws))
        seen = []
        real_load, real_open = torch.load, builtins.open

        def spy_load(f, *a, **k):
            seen.append(str(f))
            return real_load(f, *a, **k)

        def spy_open(f, *a, **k):
            if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
                seen.append(str(f))
            return real_open(f, *a, **k)
        torch.load, builtins.open = spy_load, spy_open
        try:
            stats = load_shard(gm, ckpt, rank, ws, args)
        finally:
            torch.load, builtins.open = real_load, real_open
        still_meta = [n for n, t in list(gm.named_parameters()) + list(gm.named_buffers()) if t.is_meta]
        with torch.no_grad():
            diff = (gm(*inputs) - ref_sm(*inputs)).abs().max().item()
        out.append({"ckpt": str(ckpt), "options": dict(options), "seen": sorted(set(
            s.rsplit("/", 1)[-1] for s in seen if "consolidated" in s or s.endswith(".safetensors"))),
            "stats": stats, "still_meta": still_meta, "diff": diff,
            "layer_bytes": _sharded_layer_bytes(gm)})
    return out


def raise_on_rank(bad_rank: int):
    """Rank bad_rank raises; the others block in a collective that can never complete."""
    if dist.get_rank() == bad_rank:
        raise ValueError(f"boom from rank {bad_rank}")
    t = torch.ones(1)
    dist.all_reduce(t)  # waits for bad_rank forever (until killed or the collective timeout)
    return t.item()


def pipeline_worker(preset: str, n_layers: int, n_micro_list):
    """Stage = rank: capture, pipeline_split into world_size stages, drop the other stages' weights,
    run with each micro-batch count; compare with the unsplit graph."""
    from graphopt.distributed.pipeline_run import drop_other_stages, run_pipeline_rank
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    rank, ws = dist.get_rank(), dist.get_world_size()
    args, sm = build_score_module(preset, n_layers=n_layers)
    inputs = example_batch(args, B=4, T=6)
    gm = capture_graph(sm, inputs)
    with torch.no_grad():
        ref = gm(*inputs)
    full = _sharded_layer_bytes(gm)
    split, recs = run_passes(gm, ["pipeline_split"], PassContext(model_args=args, rank=rank, world_size=ws))
    drop_other_stages(split, rank)
    mine = sum(t.numel() * t.element_size() for name, t in list(split.named_parameters()) + list(split.named_buffers())
               if ".layers." in f".{name}" and t.dim() == 2 and not t.is_meta)
    diffs = [(run_pipeline_rank(split, inputs, m) - ref).abs().max().item() for m in n_micro_list]
    return {"diffs": diffs, "layer_bytes_full": full, "layer_bytes_mine": mine, "matches": recs[0].matches,
            "stages": sorted(n for n, _ in split.named_children() if n.startswith("submod_"))}


def tied_tp_worker(preset: str, cases):
    """cases: [tensor_parallel options]. A tied model captured once (export), sharded per case. Per
    case: the log-prob diff against the unsharded graph; what the rank holds (runner count_params);
    the shapes of the distinct storages holding (a cut of) the [V, D] table; whether the token
    lookup and the LM head read one storage; the pass's embedding / vocab_logprob counts."""
    import copy
    from graphopt.graph_attrs import attr
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    from graphopt.runner.worker import count_params
    aten = torch.ops.aten
    rank, ws = dist.get_rank(), dist.get_world_size()
    args, sm = build_score_module(preset)
    V, D = args.vocab_size, args.dim
    cuts = {(V, D), (V // ws, D), (V, D // ws)}  # whole table, vocab slice (head), dim slice (lookup)
    inputs = example_batch(args)
    gm0 = capture_graph(sm, inputs)
    with torch.no_grad():
        ref = gm0(*inputs)
    out = []
    for options in cases:
        gm, recs = run_passes(copy.deepcopy(gm0), [("tensor_parallel", dict(options))],
                              PassContext(example_inputs=inputs, model_args=args, rank=rank, world_size=ws))
        with torch.no_grad():
            diff = (gm(*inputs) - ref).abs().max().item()
        reads = {}  # role -> storage of the tensor its get_attr reads
        for n in gm.graph.nodes:
            w = n.args[0] if n.target is aten.embedding.default else n.args[1] if n.target is aten.linear.default else None
            if isinstance(w, torch.fx.Node) and w.op == "get_attr" and tuple(attr(gm, w.target).shape) in cuts:
                reads["lookup" if n.target is aten.embedding.default else "head"] = \
                    attr(gm, w.target).untyped_storage().data_ptr()
        held = [t for _, t in gm.named_parameters(remove_duplicate=False)]
        tables = {t.untyped_storage().data_ptr(): tuple(t.shape) for t in held if tuple(t.shape) in cuts}
        out.append({"options": dict(options), "diff": diff, "n_params": count_params(gm),
                    "table_shapes": sorted(tables.values()), "one_storage": reads["lookup"] == reads["head"],
                    "embedding": recs[0].stats["embedding"], "vocab_logprob": recs[0].stats["vocab_logprob"]})
    return out


def score_checkpoint(ckpt: str, limit: int, strategy: str = "shared_prefix"):
    """(requests' batches, n_requests, log-likelihoods [n] float64) of a checkpoint loaded whole in this
    process, the eager model scoring the synthetic HellaSwag set's first `limit` rows."""
    from graphopt.checkpoints import load_model
    from graphopt.data import load_hellaswag
    from graphopt.scoring.batch import ScoreModule
    from graphopt.scoring.score_loop import score_requests
    from graphopt.scoring.requests import build_requests
    from graphopt.scoring.strategies import build_batches
    model, tokenizer = load_model(ckpt, tokenizer="word-hash")  # random weights, no tokenizer file
    requests = build_requests(load_hellaswag(None, limit=limit), tokenizer)
    batches = build_batches(requests, strategy)
    with torch.no_grad():
        return batches, len(requests), score_requests(ScoreModule(model).eval(), batches, len(requests), False)


def _reads(gm, role_ops) -> dict:
    """role -> the tensor its op's get_attr weight reads, e.g. {"lookup": table, "head": table}."""
    from graphopt.graph_attrs import attr
    out = {}
    for n in gm.graph.nodes:
        for role, (op, i) in role_ops.items():
            w = n.args[i] if n.op == "call_function" and n.target is op and len(n.args) > i else None
            if isinstance(w, torch.fx.Node) and w.op == "get_attr":
                out[role] = attr(gm, w.target)
    return out


def tied_checkpoint_worker(jobs, limit: int = 3):
    """jobs: [(checkpoint directory, cases)] -> one result list per job (tied_checkpoint_cases)."""
    return [tied_checkpoint_cases(ckpt, cases, limit) for ckpt, cases in jobs]


def tied_checkpoint_cases(ckpt: str, cases, limit: int = 3):
    """The runner's sharded path on a checkpoint directory, per case ("tensor_parallel" options dict,
    or "pipeline"): the model built on the meta device (load_model_structure), optimize() with
    worker.load_rank_weights filling only this rank's shard / stage, then every request scored
    (pipeline: pipeline_run.StagePerRank, stage = rank). Reports per case: log-likelihoods, what the
    embedding lookup and the LM head read (shapes, one tensor or not), held parameters
    (count_params), bytes loaded, tensors left on meta, the wq / w1 shapes of every layer held."""
    from graphopt.checkpoints import load_model_structure
    from graphopt.optimize_model import optimize
    from graphopt.distributed.pipeline_run import StagePerRank
    from graphopt.runner.worker import count_params, load_rank_weights
    from graphopt.scoring.batch import ScoreModule
    from graphopt.scoring.score_loop import score_requests
    aten = torch.ops.aten
    rank, ws = dist.get_rank(), dist.get_world_size()
    batches, n_req, _ = score_checkpoint(ckpt, limit)  # same requests as the test's single-process run
    out = []
    for case in cases:
        model, _ = load_model_structure(ckpt, tokenizer="word-hash")
        pipeline = case == "pipeline"
        passes = ["pipeline_split"] if pipeline else [("tensor_parallel", dict(case))]
        loaded = {}

        def load(gm):
            loaded.update(load_rank_weights(gm, ckpt, rank, ws, model.args, one_stage=pipeline))
        opt = optimize(ScoreModule(model).eval(), batches[0].model_inputs(), passes, "none", rank=rank,
                       world_size=ws, model_args=model.args, load_weights=load, device="cpu")
        fn = StagePerRank(opt, ws) if pipeline else opt
        with torch.no_grad():
            loglik = score_requests(fn, batches, n_req, False)
        gm = opt.graph
        if pipeline:  # the lookup and the head sit in the stage submodules, which read the split's weights
            reads = {}
            for name, sub in gm.named_children():
                if name.startswith("submod_"):
                    reads.update(_stage_reads(gm, name, sub, last=name == f"submod_{ws - 1}"))
        else:
            reads = _reads(gm, {"lookup": (aten.embedding.default, 0), "head": (aten.linear.default, 1)})
        held = {name: tuple(t.shape) for name, t in gm.named_parameters() if t.numel()}
        out.append({"case": case, "loglik": loglik,
                    "lookup": tuple(reads["lookup"].shape) if "lookup" in reads else None,
                    "head": tuple(reads["head"].shape) if "head" in reads else None,
                    "one_tensor": "lookup" in reads and reads.get("lookup") is reads.get("head"),
                    "n_params": count_params(gm), "bytes_loaded": loaded["bytes_loaded"],
                    "still_meta": [n for n, t in list(gm.named_parameters()) + list(gm.named_buffers()) if t.is_meta],
                    "wq": sorted(s for n, s in held.items() if n.endswith("attention.wq.weight")),
                    "wk": sorted(s for n, s in held.items() if n.endswith("attention.wk.weight")),
                    "w1": sorted(s for n, s in held.items() if n.endswith("feed_forward.w1.weight"))})
    return out


def _stage_reads(split, name: str, sub, last: bool) -> dict:
    """A pipeline stage submodule's lookup weight, and the last stage's head weight (its last linear):
    the placeholder traced to the split graph's get_attr that feeds it, where this rank holds it
    (other stages' weights are empty placeholders)."""
    from graphopt.graph_attrs import attr
    aten = torch.ops.aten
    call = next(n for n in split.graph.nodes if n.op == "call_module" and n.target == name)
    feed = dict(zip([p for p in sub.graph.nodes if p.op == "placeholder"], call.args))
    found = {}
    for n in sub.graph.nodes:
        if n.op == "call_function" and n.target is aten.embedding.default:
            found["lookup"] = feed.get(n.args[0])
        elif n.op == "call_function" and n.target is aten.linear.default and last:
            found["head"] = feed.get(n.args[1])
    return {role: attr(split, src.target) for role, src in found.items()
            if isinstance(src, torch.fx.Node) and src.op == "get_attr" and attr(split, src.target).numel()}


def tp_per_pair_worker(presets):
    """tensor_parallel on a graph captured from ONE pair (batch 1, as per-pair scoring): the RoPE split's
    -1 must not stay symbolic in a batch that may be 1. -> [(preset, max |sharded - eager|)] on two pairs."""
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    rank, ws = dist.get_rank(), dist.get_world_size()
    out = []
    for preset in presets:
        args, sm = build_score_module(preset)
        inputs = example_batch(args, B=1, T=7, seed=3)
        gm = capture_graph(sm, inputs)
        ctx = PassContext(example_inputs=inputs, model_args=args, rank=rank, world_size=ws)
        gm, _ = run_passes(gm, ["tensor_parallel"], ctx)
        diff = 0.0
        with torch.no_grad():
            for x in (inputs, example_batch(args, B=1, T=11, seed=4)):
                diff = max(diff, (gm(*x) - sm(*x)).abs().max().item())
        out.append((preset, diff))
    return out


def sharded_sweep_yaml(name: str, model, out, world_size: int, limit: int, runs: str, data_parallel: int | None = None) -> str:
    """An experiment YAML for the sharded runner tests: eager per-pair reference, shared-prefix scoring,
    no warm-up, one timed pass; `runs` is the YAML text of its runs list (indented items)."""
    dp = "" if data_parallel is None else f"data_parallel: {data_parallel}\n"
    return (f"name: {name}\nmodel: {model}\nworld_size: {world_size}\n{dp}data: {{limit: {limit}}}\nwarmup: 0\n"
            f"repeats: 1\noutput_dir: {out}\nreference: {{capture: none, scoring: {{strategy: per_pair}}}}\n"
            f"scoring: {{strategy: shared_prefix}}\nruns:\n{runs}")
