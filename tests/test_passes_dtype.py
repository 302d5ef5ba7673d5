"""cast_dtype: weights and matmul inputs in bfloat16/float16, norms / softmax / log-probs in float32.

Tolerances (tiny random models, per-token log-probs of magnitude ~5-10): bfloat16 max |Δ| <= 0.1,
float16 max |Δ| <= 0.02, against the fp32 graph; the chosen ending of a synthetic 4-way
multiple-choice set (8 questions) is unchanged.
"""
import copy

import pytest
import torch
from torch import nn

import graphopt.kernels  # noqa: F401
from graphopt.graph_capture import capture
from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from graphopt.scoring.batch import ScoreModule, sum_by_owner

aten = torch.ops.aten
TOL = {"bfloat16": 0.1, "float16": 0.02}
_CAPTURED = {}


def _choice_set(n_questions=8, n_choices=4, ctx_len=10, cont_len=4, vocab=512, seed=0):
    """One row per (question, ending): shared random context, random ending; the last cont_len
    next-token predictions are scored. Returns model inputs and owners (row index)."""
    g = torch.Generator().manual_seed(seed)
    rows, B, T = [], n_questions * n_choices, ctx_len + cont_len - 1
    for _ in range(n_questions):
        ctx = torch.randint(0, vocab, (ctx_len,), generator=g)
        for _ in range(n_choices):
            rows.append(torch.cat([ctx, torch.randint(0, vocab, (cont_len,), generator=g)]))
    full = torch.stack(rows)  # [B, T + 1]
    ids = full[:, :-1].contiguous()
    pos = torch.arange(T).expand(B, T).contiguous()
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
    cols = torch.arange(ctx_len - 1, T)  # positions predicting the continuation
    score_idx = (torch.arange(B)[:, None] * T + cols).flatten()
    targets = full[:, ctx_len:].flatten()
    owners = torch.arange(B).repeat_interleave(cont_len)
    return (ids, pos, mask, score_idx, targets), owners, n_questions, n_choices


def _setup(preset="tiny"):
    if preset not in _CAPTURED:
        args = ModelArgs.from_name(preset)
        score = ScoreModule(init_random_weights(Transformer(args)).eval())
        inputs, owners, nq, nc = _choice_set()
        _CAPTURED[preset] = (args, score, inputs, owners, nq, nc, capture(score, inputs, method="export"))
    return _CAPTURED[preset]


def _choices(token_logprobs, owners, nq, nc):
    return sum_by_owner(token_logprobs, owners, nq * nc).view(nq, nc).argmax(-1)


def _vals(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cast_dtype_rewrites_and_keeps_choices(dtype):
    args, score, inputs, owners, nq, nc, captured = _setup()
    gm = copy.deepcopy(captured)
    with torch.no_grad():
        ref = gm(*inputs)
    gm, (rec,) = run_passes(gm, [{"name": "cast_dtype", "dtype": dtype}], PassContext(example_inputs=inputs))
    low = getattr(torch, dtype)
    assert rec.modified and rec.matches == 2 * 7 + 2  # 7 linears per layer + embedding + untied head
    # every linear: weight and input in the low dtype; embedding too
    linears = _vals(gm, aten.linear.default)
    assert len(linears) == 2 * 7 + 1
    for lin in linears:
        assert lin.args[1].meta["val"].dtype == low and lin.args[0].meta["val"].dtype == low
        assert lin.meta["val"].dtype == low
    assert all(getattr(gm, "model").get_parameter(n.args[1].target.removeprefix("model.")).dtype == low
               for n in linears)
    # attention matmuls in the low dtype, softmax / norm statistics / log-softmax in float32
    assert all(n.meta["val"].dtype == low for n in _vals(gm, aten.matmul.default))
    assert all(n.args[0].meta["val"].dtype == torch.float32 for n in _vals(gm, aten.softmax.int))
    assert all(n.meta["val"].dtype == torch.float32 for n in _vals(gm, aten.rsqrt.default))
    assert all(n.args[0].meta["val"].dtype == torch.float32 for n in _vals(gm, aten.log_softmax.int))
    # parameter bytes: every matmul weight halves; norm weights stay fp32
    norm_bytes = (2 * 2 + 1) * args.dim * 4
    before, after = rec.stats["param_bytes_before"], rec.stats["param_bytes_after"]
    assert after == (before - norm_bytes) // 2 + norm_bytes
    with torch.no_grad():
        got = gm(*inputs)
    assert got.dtype == torch.float32
    diff = (got - ref).abs().max().item()
    assert 0 < diff <= TOL[dtype], diff
    assert torch.equal(_choices(got, owners, nq, nc), _choices(ref, owners, nq, nc))


def test_cast_after_scoring_passes_and_tied_weights():
    """tiny-tied: one tensor serves the embedding and the head, it stays one tensor; cast_dtype after
    prune_lm_head + fused_logprob casts linear_logprob's weight and its hidden input."""
    args, score, inputs, owners, nq, nc, captured = _setup("tiny-tied")
    gm = copy.deepcopy(captured)
    with torch.no_grad():
        ref = gm(*inputs)
    gm, recs = run_passes(gm, ["prune_lm_head", "fused_logprob", "cast_dtype"], PassContext(example_inputs=inputs))
    (lp,) = _vals(gm, torch.ops.graphopt.linear_logprob.default)
    assert lp.args[0].meta["val"].dtype == torch.bfloat16 and lp.args[1].meta["val"].dtype == torch.bfloat16
    emb = _vals(gm, aten.embedding.default)[0]
    assert gm.get_parameter(emb.args[0].target) is gm.get_parameter(lp.args[1].target)
    assert recs[2].stats["tensors_cast"] == 2 * 7 + 1
    with torch.no_grad():
        got = gm(*inputs)
    assert got.dtype == torch.float32 and (got - ref).abs().max().item() <= TOL["bfloat16"]
    assert torch.equal(_choices(got, owners, nq, nc), _choices(ref, owners, nq, nc))


def test_bad_dtype_is_an_error():
    gm = torch.fx.symbolic_trace(nn.Linear(4, 4))
    with pytest.raises(PassError, match="option 'dtype' expects one of 'bfloat16', 'float16', got 'int8'"):
        run_passes(gm, [{"name": "cast_dtype", "dtype": "int8"}])
    with pytest.raises(PassError, match="expects str"):
        run_passes(gm, [{"name": "cast_dtype", "dtype": torch.bfloat16}])


class _NoMatmul(nn.Module):
    def forward(self, x):
        return torch.log_softmax(x * 2.0, dim=-1)


@pytest.mark.parametrize("name", ["cast_dtype", "quantize_int8"])
def test_graph_without_linear_is_unchanged(name):
    x = torch.randn(3, 5)
    gm = torch.export.export(_NoMatmul(), (x,)).module()
    code = gm.code
    gm, (rec,) = run_passes(gm, [name], PassContext(example_inputs=(x,)))
    assert (rec.modified, rec.matches) == (False, 0) and gm.code == code
    assert torch.equal(gm(x), _NoMatmul()(x))


def test_attention_in_float32_option():
    """attention: float32 keeps the linears in bf16 and runs every SDPA on float32 q/k/v, cast back after."""
    args, score, inputs, owners, nq, nc, captured = _setup()
    gm = copy.deepcopy(captured)
    with torch.no_grad():
        ref = gm(*inputs)
    gm, recs = run_passes(gm, ["sdpa_attention", {"name": "cast_dtype", "attention": "float32"}],
                          PassContext(example_inputs=inputs))
    sdpa = _vals(gm, aten.scaled_dot_product_attention.default)
    assert recs[1].stats["attention_upcast"] == len(sdpa) == args.n_layers
    for n in sdpa:
        assert all(a.meta["val"].dtype == torch.float32 for a in n.args[:3]) and n.meta["val"].dtype == torch.float32
        assert [u.target for u in n.users] == [aten.to.dtype] and next(iter(n.users)).meta["val"].dtype == torch.bfloat16
    assert all(n.meta["val"].dtype == torch.bfloat16 for n in _vals(gm, aten.linear.default))
    with torch.no_grad():
        got = gm(*inputs)
    assert 0 < (got - ref).abs().max().item() <= TOL["bfloat16"]
    assert torch.equal(_choices(got, owners, nq, nc), _choices(ref, owners, nq, nc))
    with pytest.raises(PassError, match="option 'attention' expects one of"):
        run_passes(copy.deepcopy(captured), [{"name": "cast_dtype", "attention": "fp8"}])
