"""Passes that change head counts or split the model, on the newer families: tensor_parallel keeps q/k
norms whole and the window, prune_structured keeps the q/k norms, load_shard fills q/k norms and scaled
RoPE, pipeline_split carries the window mask."""
import pytest
import torch

from graphopt.model import Transformer, init_random_weights
from graphopt.scoring.batch import ScoreModule
from tests._family_models import (TOL, V, load_dir, max_diff, qwen3, qwen3_score_module, scaled)  # noqa: F401
from tests.test_capture import score_inputs


@pytest.mark.distributed
def test_tensor_parallel_keeps_qk_norms_whole_and_the_window():
    """tensor_parallel cuts heads; a q/k norm acts per head over head_dim, so every rank keeps all of it
    (it is not a linear the plan cuts), and the window mask is computed from the positions on every rank."""
    from graphopt.distributed.launch import launch
    from tests import _dist_workers as W
    from tests.test_distributed_tp import _check
    res = launch(W.tp_worker, 2, args=([("tiny-qwen3", {}, ()), ("tiny-window", {"vocab_parallel": True}, ())],),
                 timeout_s=240)
    _check(res, 2)


def test_prune_heads_keeps_qk_norms():
    """prune_structured drops kv groups (rows of wq/wk/wv, columns of wo); the q/k norms, over head_dim,
    stay as they are: the pruned graph equals the eager model with the dropped groups' wo columns zeroed."""
    from graphopt.graph_capture import capture
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    module = qwen3_score_module()
    args = module.model.args
    x = score_inputs(2, 8, 5, seed=2)
    gm = capture(module, x)
    gm, records = run_passes(gm, [{"name": "prune_structured", "ratio": 0.5, "what": "heads"}],
                             PassContext(example_inputs=x, model_args=args))
    assert records[0].stats["kv_groups_removed"] == args.n_layers  # one of 2 groups per layer
    ref = module.model
    hd, q_rows = args.head_dim, args.n_heads // args.n_kv_heads * args.head_dim
    with torch.no_grad():
        for i, layer in enumerate(ref.layers):
            kept_k = dict(gm.named_parameters())[f"model.layers.{i}.attention.wk.weight"]
            at = layer.attention
            assert at.q_norm.weight.shape == (hd,)
            kept = [g for g in range(args.n_kv_heads) if torch.equal(kept_k, at.wk.weight[g * hd:(g + 1) * hd])]
            assert len(kept) == 1
            for g in range(args.n_kv_heads):
                if g not in kept:
                    at.wo.weight[:, g * q_rows:(g + 1) * q_rows] = 0
        diff = max_diff(gm(*x), module(*x))
    assert diff <= TOL, f"pruned qwen3 graph vs eager with zeroed groups: {diff}"


@pytest.mark.parametrize("which", ["qwen3", "llama3"])
def test_load_shard_fills_qk_norms_and_scaled_rope(qwen3, scaled, which):
    """graphopt.distributed.load_shard (lazy safetensors slices, one rank here) un-permutes the q/k norms
    and rebuilds the RoPE tables with the scaling: the filled graph gives load_model's log-probs."""
    from graphopt.checkpoints import read_hf_config
    from graphopt.distributed.load_shard import load_shard
    from graphopt.graph_capture import capture
    d = qwen3[2] if which == "qwen3" else scaled["llama3"][1]
    args = read_hf_config(d)
    x = score_inputs(2, 8, 5, vocab=V, seed=3)
    gm = capture(ScoreModule(init_random_weights(Transformer(args), seed=1).eval()), x).to("meta")
    # weightless, as a sharded worker's graph: load_shard fills what is on the meta device
    stats = load_shard(gm, d, 0, 1, args)
    assert stats["files_opened"] == ["model.safetensors"]
    with torch.no_grad():
        diff = max_diff(gm(*x), ScoreModule(load_dir(d))(*x))
    assert diff <= 1e-5, f"{which}: load_shard graph vs load_model differ by {diff}"


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-window"])
def test_pipeline_split_carries_window_mask_and_qk_norms(preset):
    """pipeline_split at layer boundaries: the window mask (computed once, before layer 0) reaches the
    later stages, the q/k norms go with their layers; rows of 12 > window 8."""
    from graphopt.distributed.pipeline_run import run_pipeline
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    from tests import _dist_workers as W
    args, sm = W.build_score_module(preset, n_layers=4)
    inputs = W.example_batch(args, B=4, T=12)
    gm = W.capture_graph(sm, inputs)
    with torch.no_grad():
        ref = sm(*inputs)
        split, recs = run_passes(gm, [("pipeline_split", {"n_stages": 2})], PassContext(model_args=args))
        assert recs[0].matches == 2
        assert max_diff(split(*inputs), ref) <= 1e-5
        assert max_diff(run_pipeline(split, inputs, n_micro=2, devices=["cpu"] * 2), ref) <= 1e-5
