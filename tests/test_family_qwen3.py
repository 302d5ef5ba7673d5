"""Qwen3 (q/k norms, explicit head_dim) and Llama with head_dim != dim / heads: transformers' logits
(fp32, 1e-4) from tiny saved models, the norms' permutation, tied and Meta round trips, and the named
pipelines rewriting them fully while keeping the eager log-probs."""
import pytest
import torch

import graphopt
from graphopt.checkpoints import load_meta_checkpoint, save_meta_checkpoint
from tests._builders import score_inputs, score_module
from tests._family_models import (COMMON, D, TOL, load_dir, logits_of, max_diff, qwen3_score_module, save_hf_model,
                                  transformers)


def test_qwen3_gives_transformers_logits(hf_qwen3):
    hf, want, d = hf_qwen3
    model = load_dir(d)
    a = model.args
    assert a.qk_norm and a.head_dim == 24 and not a.qkv_bias and a.rope_theta == 1e6
    at, hf_at = model.layers[0].attention, hf.model.layers[0].self_attn
    assert at.wq.weight.shape == (4 * 24, D) and at.wo.weight.shape == (D, 4 * 24)
    # the norm weights got one head's rotate_half permutation: same values, Meta's pair order
    perm = torch.arange(24).view(2, 12).t().flatten()  # Meta dim 2i+j <- HF dim j*12+i
    assert torch.equal(at.q_norm.weight, hf_at.q_norm.weight[perm])
    assert torch.equal(at.k_norm.weight, hf_at.k_norm.weight[perm])
    assert not torch.equal(at.q_norm.weight, hf_at.q_norm.weight)
    diff = max_diff(logits_of(model), want)
    assert diff <= TOL, f"qwen3: max |logit diff| {diff}"


def test_qwen3_norm_weights_unpermuted_matter(hf_qwen3):
    """The same weights with the q/k norms left in HF's order give other logits (the test can fail)."""
    hf, want, d = hf_qwen3
    model = load_dir(d)
    with torch.no_grad():
        for layer, hf_layer in zip(model.layers, hf.model.layers):
            layer.attention.q_norm.weight.copy_(hf_layer.self_attn.q_norm.weight)
            layer.attention.k_norm.weight.copy_(hf_layer.self_attn.k_norm.weight)
    assert max_diff(logits_of(model), want) > 1e-2


def test_qwen3_tied_and_meta_round_trip(tmp_path):
    cfg = transformers.Qwen3Config(**{**COMMON, "tie_word_embeddings": True}, head_dim=16, rope_theta=1e6)
    _, want = save_hf_model(transformers.Qwen3ForCausalLM, cfg, tmp_path / "hf", seed=7)
    model = load_dir(tmp_path / "hf")
    assert model.args.tie_embeddings and model.output.weight is model.tok_embeddings.weight
    assert max_diff(logits_of(model), want) <= TOL
    save_meta_checkpoint(model, tmp_path / "meta", n_shards=2)
    back = load_meta_checkpoint(tmp_path / "meta")
    assert back.args == model.args and back.args.qk_norm
    torch.testing.assert_close(logits_of(back), logits_of(model), atol=0, rtol=0)


def test_llama_with_head_dim_not_dim_over_heads(tmp_path):
    cfg = transformers.LlamaConfig(**COMMON, head_dim=24, rope_theta=10000.0)
    _, want = save_hf_model(transformers.LlamaForCausalLM, cfg, tmp_path, seed=8)
    model = load_dir(tmp_path)
    assert model.args.head_dim == 24 and not model.args.qk_norm
    diff = max_diff(logits_of(model), want)
    assert diff <= TOL, f"llama head_dim 24: max |logit diff| {diff}"


@pytest.mark.parametrize("pipeline", ["exact", "exact-cpu"])
@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-window"])
def test_optimized_matches_eager(preset, pipeline):
    """The named pipelines rewrite these models as fully as tiny-gqa (every pass matches; fuse_rmsnorm
    finds the q/k norms too) and keep the eager log-probs, on rows longer than the window (T = 11 > 8)."""
    torch._dynamo.reset()
    if preset == "tiny-qwen3":
        module = qwen3_score_module()
    else:
        module = score_module(preset, seed=4)
    opt = graphopt.optimize(module, score_inputs(2, 8, 5, seed=2), pipeline)
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 11, 7)]:
            y = score_inputs(*shape, seed=sum(shape))
            diff = max_diff(opt(*y), module(*y))
            assert diff <= TOL, f"{preset} {pipeline}: optimized vs eager differ by {diff} at {shape}"
    matches = {r.name: r.matches for r in opt.records}
    assert all(n > 0 for name, n in matches.items() if name not in ("cse", "dce")), matches
    # per layer: attention_norm, ffn_norm (and q_norm, k_norm); and the final norm
    n_norms = 2 * (4 if preset == "tiny-qwen3" else 2) + 1
    assert matches["fuse_rmsnorm"] == n_norms and matches["fuse_rope"] == 4, matches
    targets = [n.target for n in opt.graph.graph.nodes]
    assert targets.count(torch.ops.graphopt.rms_norm.default) == n_norms


def test_qwen3_fast_pipeline_keeps_attention_inputs_in_one_dtype():
    """cast_dtype (pipeline fast) keeps norm weights float32: the q/k norms return q's / k's dtype, so
    SDPA gets bfloat16 q, k and v (a float32 q/k failed with 'same dtype' before) and log-probs stay
    close to float32's."""
    torch._dynamo.reset()
    module = qwen3_score_module()
    x = score_inputs(3, 11, 7, seed=5)
    opt = graphopt.optimize(module, x, "fast")
    sdpa = [n for n in opt.graph.graph.nodes if n.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert len(sdpa) == 2 and all(a.meta["val"].dtype == torch.bfloat16 for n in sdpa for a in n.args[:3])
    with torch.no_grad():
        diff = max_diff(opt(*x), module(*x))
    assert 0 < diff < 0.1, f"fast (bfloat16) vs float32 log-probs: {diff}"
