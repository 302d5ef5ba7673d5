"""graphopt.passes._patterns: canonicalise takes out the metadata asserts and gives every no-op cast and
unsqueeze one user, keeping real casts, without changing outputs; restore puts the graph back; patterns
trace into the export IR with their number inputs and symbolic sizes as placeholders; replace_all
rewrites what its filter accepts, with eps read from the graph and meta["val"] on the new nodes."""
import copy
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import graphopt.passes.fuse_rmsnorm as rmsnorm_pass
import graphopt.passes.fuse_rope as rope_pass
from graphopt.graph_capture import capture
from graphopt.model.llama import RMSNorm
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, get_pass
from graphopt.passes._patterns import canonicalise, restore, trace
from tests.test_capture import score_inputs, score_module

aten = torch.ops.aten
F32 = torch.float32
_CAPTURED = {}


def _captured(dtype):
    if dtype not in _CAPTURED:
        module = score_module("tiny").to(dtype)
        _CAPTURED[dtype] = module, capture(module, score_inputs(2, 8, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _CAPTURED[dtype][0], copy.deepcopy(_CAPTURED[dtype][1])


def _ops(gm):
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_canonicalise_and_restore_keep_outputs(dtype):
    _, gm = _captured(dtype)
    x = score_inputs(3, 11, 7, seed=1)
    before, ref = _ops(gm), gm(*x)
    undo = canonicalise(gm)
    gm.recompile()
    after = _ops(gm)
    assert after[aten._assert_tensor_metadata.default] == 0 < before[aten._assert_tensor_metadata.default]
    noop = [n for n in gm.graph.nodes if n.target is aten.to.dtype and n.args[0].meta["val"].dtype == n.args[1]]
    unsqueezes = [n for n in gm.graph.nodes if n.target is aten.unsqueeze.default]
    assert all(len(n.users) == 1 for n in noop + unsqueezes)  # none shared with the residual add, or q with k
    if dtype == torch.float32:
        assert after[aten.to.dtype] > before[aten.to.dtype]
    else:  # every x.float() is a real cast here: kept as it was
        assert not noop and after[aten.to.dtype] == before[aten.to.dtype]
    assert torch.equal(gm(*x), ref)
    restore(gm, undo, {})
    gm.recompile()
    assert _ops(gm) == before and torch.equal(gm(*x), ref)


def test_trace_turns_numbers_and_sizes_into_placeholders():
    norm = trace(rmsnorm_pass._pattern_1, (((2, 3, 8), F32), ((8,), F32), rmsnorm_pass.EPS))
    assert norm.meta["inputs"] == ["x", "weight", "eps"]
    (add,) = [n for n in norm.graph.nodes if n.target is aten.add.Tensor]
    assert add.args[1].op == "placeholder" and add.args[1].name == "eps"
    assert aten._assert_tensor_metadata.default not in _ops(norm)
    rope = trace(rope_pass._pattern_1, (((2, 3, 5, 8), F32), ((2, 3, 4), F32), ((2, 3, 4), F32)), ("BTH", "BT", "BT"))
    assert rope.meta["inputs"] == ["x", "cos", "sin", "size0", "size1", "size2"]  # B, T, H of the reshape
    assert aten.sym_size.int not in _ops(rope)


def test_fuse_rope_after_cse_shares_cos_sin():
    module, gm = _captured(torch.float32)
    x = score_inputs(2, 8, 5)
    gm, (_, rope) = run_passes(gm, ["cse", "fuse_rope"], PassContext(example_inputs=x))
    assert rope.matches == 4 and _ops(gm)[torch.ops.graphopt.rope.default] == 4
    ropes = [n for n in gm.graph.nodes if n.target is torch.ops.graphopt.rope.default]
    assert all(n.args[1].target is aten.index.Tensor for n in ropes)  # cos [B, T, D/2], its unsqueeze gone
    with torch.no_grad():
        torch.testing.assert_close(gm(*x), module(*x), atol=1e-5, rtol=0)


class _Norms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = RMSNorm(16, eps=1e-3)

    def forward(self, x, gate, up, row):
        # export reuses the norm's x.float() for x * 2 and x * 3; row [16] broadcasts: not a swiglu
        return self.norm(x) + x * 2 + x * 3 + F.silu(gate) * up + F.silu(gate) * row


def test_replace_all_reads_eps_filters_and_fills_vals():
    module = _Norms().eval()
    x = (torch.randn(2, 3, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16), torch.randn(16))
    gm = capture(module, x, dynamic=False)
    for name in ("fuse_rmsnorm", "fuse_swiglu"):
        options = {k: o.default for k, o in get_pass(name).options.items()}
        assert get_pass(name).fn(gm, PassContext(example_inputs=x, options=options)).stats["matches"] == 1, name
    (norm,) = [n for n in gm.graph.nodes if n.target is torch.ops.graphopt.rms_norm.default]
    assert norm.args[2] == 1e-3 and norm.meta["val"].shape == (2, 3, 16)
    (cast,) = [n for n in gm.graph.nodes if n.target is aten.to.dtype]  # its copies merged back
    assert {u.args[1] for u in cast.users} == {2, 3}
    (swiglu,) = [n for n in gm.graph.nodes if n.target is torch.ops.graphopt.swiglu.default]
    assert swiglu.meta["val"].shape == (2, 3, 16) and aten.silu.default in _ops(gm)  # the broadcast one stays
    with torch.no_grad():
        torch.testing.assert_close(gm(*x), module(*x), atol=1e-5, rtol=0)
