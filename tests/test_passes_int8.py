"""quantize_int8 and graphopt.int8_linear: W8A8 linears with int32 accumulation.

Tolerances: the op against the float matmul, relative to the output's scale: <= 2e-2 (int8 on both
sides: ~0.4 % per element, errors of random sign partly cancel over K). Whole graphs (tiny random
models, per-token log-probs of magnitude ~5-10): max |Δ| <= 0.3 against the fp32 graph, and the
chosen ending of the synthetic 4-way set (8 questions) is unchanged.
"""
import copy

import pytest
import torch

from graphopt.kernels.int8_linear import int8_linear, padded_int_mm, quantize_rows, quantize_weight
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from tests.test_passes_dtype import _choices, _setup, _vals

aten = torch.ops.aten
INT8_LINEAR = torch.ops.graphopt.int8_linear.default
OP_RTOL = 2e-2
GRAPH_TOL = 0.3
SCORING = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention",
           "prune_lm_head", "fused_logprob"]


def test_weight_and_rows_quantise_symmetrically():
    w = torch.randn(6, 10)  # [N, K]
    w[2] = 0.0  # an all-zero channel gets a tiny scale, not a division by zero
    wq, scale = quantize_weight(w)
    assert wq.dtype == torch.int8 and wq.shape == (10, 6) and scale.shape == (6,)
    assert wq.t().is_contiguous()  # column-major [K, N]: the layout cuBLASLt's int8 matmul takes as is
    assert wq.abs().max() == 127 and torch.all(wq[:, 2] == 0)
    assert torch.allclose(wq.t().float() * scale[:, None], w, atol=scale.max().item() / 2 + 1e-7)
    q, s = quantize_rows(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]] and s.shape == (2, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_float_linear(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 64, generator=g).to(dtype)  # [B, T, K]
    w, b = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)  # [N, K], [N]
    wq, scale = quantize_weight(w)
    y = INT8_LINEAR(x, wq, scale, b)
    assert y.shape == (2, 5, 48) and y.dtype == dtype
    ref = torch.nn.functional.linear(x.float(), w, b)
    err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
    assert 0 < err <= OP_RTOL, err
    assert torch.equal(INT8_LINEAR(x, wq, scale), int8_linear(x, wq, scale))  # the op is the composite


@pytest.mark.parametrize("M, K, N", [(1, 64, 48), (3, 5, 7), (40, 24, 13), (17, 9, 16), (17, 64, 48)])
@pytest.mark.parametrize("layout", ["column-major", "row-major"])
def test_padded_int_mm_equals_the_exact_int32_product(M, K, N, layout, monkeypatch):
    # the CUDA path's padding (rows > 16, K and N multiples of 8), checked here on CPU: exact, any shape
    g = torch.Generator().manual_seed(M * K * N)
    q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).t()  # [K, N] as quantize_weight makes it
    if layout == "row-major":
        w = w.contiguous()
    seen = []  # the weight torch._int_mm gets: padded or not, in the layout it came in
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: seen.append(b) or real(a, b))
    out = padded_int_mm(q, w)
    within = K % 8 == 0 and N % 8 == 0
    assert (seen[0] is w) == within  # no copy of a weight within the limits
    assert seen[0].t().is_contiguous() == (layout == "column-major" or not within)  # a padded copy: column-major
    assert out.dtype == torch.int32 and out.shape == (M, N)
    assert torch.equal(out, q.int() @ w.int())


def test_quantize_int8_rewrites_every_linear_and_keeps_choices():
    args, score, inputs, owners, nq, nc, captured = _setup()
    gm = copy.deepcopy(captured)
    with torch.no_grad():
        ref = gm(*inputs)
    gm, recs = run_passes(gm, SCORING + [{"name": "cast_dtype", "dtype": "bfloat16"}, "quantize_int8", "dce"],
                          PassContext(example_inputs=inputs))
    rec = recs[-2]
    per_layer = 4  # merged qkv, wo, merged gate/up, w2
    assert rec.modified and rec.matches == args.n_layers * per_layer
    assert not _vals(gm, aten.linear.default)
    nodes = _vals(gm, INT8_LINEAR)
    assert len(nodes) == args.n_layers * per_layer
    for n in nodes:  # int8 weights [K, N], bf16 activations in and out (attention stays bf16)
        assert n.args[1].meta["val"].dtype == torch.int8 and n.args[2].meta["val"].dtype == torch.float32
        assert n.args[0].meta["val"].dtype == torch.bfloat16 and n.meta["val"].dtype == torch.bfloat16
    assert all(p.dtype != torch.bfloat16 or p.ndim != 2 or "tok_embeddings" in name or "output" in name
               for name, p in gm.named_parameters())  # no float linear weight left behind
    assert rec.stats["param_bytes_after"] < rec.stats["param_bytes_before"]
    with torch.no_grad():
        got = gm(*inputs)
    diff = (got - ref).abs().max().item()
    assert got.dtype == torch.float32 and 0 < diff <= GRAPH_TOL, diff
    assert torch.equal(_choices(got, owners, nq, nc), _choices(ref, owners, nq, nc))


def test_exclude_keeps_named_linears_in_float():
    args, score, inputs, owners, nq, nc, captured = _setup()
    gm = copy.deepcopy(captured)
    gm, recs = run_passes(gm, [{"name": "quantize_int8", "exclude": "feed_forward, output"}],
                          PassContext(example_inputs=inputs))
    assert recs[0].matches == args.n_layers * 4  # wq, wk, wv, wo; not w1/w2/w3 nor the LM head
    kept = {n.args[1].target.rsplit(".", 2)[-2] for n in _vals(gm, aten.linear.default)}
    assert kept == {"w1", "w2", "w3", "output"}
    with torch.no_grad():  # float32 graph: int8_linear returns float32
        assert all(n.meta["val"].dtype == torch.float32 for n in _vals(gm, INT8_LINEAR))
        assert (gm(*inputs) - captured(*inputs)).abs().max().item() <= GRAPH_TOL


def test_compiled_int8_graph_keeps_the_int8_matmuls():
    """inductor traces through the composite op: every int8 matmul stays an int8 matmul (the
    quantisation is fused into the kernels around it) and the outputs keep the FX graph's fidelity."""
    from torch._inductor.utils import run_and_get_code
    args, score, inputs, owners, nq, nc, captured = _setup()
    gm, _ = run_passes(copy.deepcopy(captured), SCORING + ["cast_dtype", "quantize_int8"],
                       PassContext(example_inputs=inputs))
    with torch.no_grad():
        ref = captured(*inputs)
        got, codes = run_and_get_code(torch.compile(gm, backend="inductor"), *inputs)
    assert "".join(codes).count("extern_kernels._int_mm(") == args.n_layers * 4
    assert (got - ref).abs().max().item() <= GRAPH_TOL
    assert torch.equal(_choices(got, owners, nq, nc), _choices(ref, owners, nq, nc))


@pytest.mark.parametrize("later", ["merge_qkv", "merge_gate_up", "prune_lm_head", "fused_logprob", "prune_structured"])
def test_linear_passes_after_quantize_int8_are_an_error(later):
    args, score, inputs, owners, nq, nc, captured = _setup()
    with pytest.raises(PassError, match=f"{later} must run before quantize_int8"):
        run_passes(copy.deepcopy(captured), ["quantize_int8", later], PassContext(example_inputs=inputs))
