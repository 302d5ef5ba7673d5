"""Every fidelity-preserving (exact) pass together, on tiny and tiny-gqa, through capture method
export and dynamo and through the torch.compile backend (compiler="none"): per-request
log-likelihoods equal the eager fp32 model within 1e-4 and the chosen endings are identical.

The pass list is taken from the registry (`list_passes()`, exact passes that need no second rank),
in an order that lets each do its job; a newly registered exact pass is appended at the end, so it
is covered here too."""
import pytest
import torch

import graphopt.kernels  # noqa: F401
from graphopt.compile_backend import backend
from graphopt.graph_capture import capture
from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, list_passes
from graphopt.scoring.batch import ScoreModule, sum_by_owner

ATOL = 1e-4
# need world_size > 1, or the packed layout's doc_ids/seg_ids inputs, or lower the graph to backend
# calls the checks below look past (mkldnn_linear): tested in their own files
DISTRIBUTED = {"tensor_parallel", "pipeline_split", "prefix_attention", "mkldnn_linear"}
# cleanup, the scoring-head passes (before the fusions hide the final norm), the fusions, cleanup again
ORDER = ["cse", "prune_lm_head", "fused_logprob", "merge_qkv", "merge_gate_up", "fuse_rmsnorm", "fuse_rope",
         "fuse_swiglu", "sdpa_attention", "dce"]
# the fusions first, then the scoring head (prune_lm_head sees through graphopt.rms_norm)
ORDER_FUSE_FIRST = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention",
                    "prune_lm_head", "fused_logprob", "cse", "dce"]


def _exact_passes(order):
    names = [p.name for p in list_passes() if p.exact and p.name not in DISTRIBUTED]
    assert {"cse", "dce", "prune_lm_head", "fused_logprob"} <= set(names)
    return [n for n in order if n in names] + sorted(set(names) - set(order))


def _choice_batch(n_questions=3, n_choices=4, ctx_len=7, cont_len=3, vocab=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, B, T = [], n_questions * n_choices, ctx_len + cont_len - 1
    for _ in range(n_questions):
        ctx = torch.randint(0, vocab, (ctx_len,), generator=g)
        rows += [torch.cat([ctx, torch.randint(0, vocab, (cont_len,), generator=g)]) for _ in range(n_choices)]
    full = torch.stack(rows)
    pos = torch.arange(T).expand(B, T).contiguous()
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
    score_idx = (torch.arange(B)[:, None] * T + torch.arange(ctx_len - 1, T)).flatten()
    inputs = (full[:, :-1].contiguous(), pos, mask, score_idx, full[:, ctx_len:].flatten())
    return inputs, torch.arange(B).repeat_interleave(cont_len), n_questions, n_choices


def _compare(run, score):
    """On the capture shape and a second one (dynamic B, T, N)."""
    for seed, shape in ((0, (3, 4, 7, 3)), (1, (2, 4, 9, 2))):
        inputs, owners, nq, nc = _choice_batch(*shape, seed=seed)
        with torch.no_grad():
            ref = sum_by_owner(score(*inputs), owners, nq * nc)
            got = sum_by_owner(run(*inputs), owners, nq * nc)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
        assert torch.equal(got.view(nq, nc).argmax(-1), ref.view(nq, nc).argmax(-1))


def _score(preset):
    args = ModelArgs.from_name(preset)
    return args, ScoreModule(init_random_weights(Transformer(args)).eval())


def _check_records(records):
    by_name = {r.name: r for r in records}
    for name in ("prune_lm_head", "fused_logprob"):
        assert by_name[name].matches == 1, name
    assert by_name["fused_logprob"].stats["linear_fused"] == 1
    for r in records:
        assert r.max_abs_diff is None or r.max_abs_diff <= ATOL, r


@pytest.mark.parametrize("preset,method,order", [
    ("tiny", "export", ORDER), ("tiny-gqa", "dynamo", ORDER_FUSE_FIRST),
    # the other combinations: same code paths, kept out of the CI budget
    pytest.param("tiny-gqa", "export", ORDER, marks=pytest.mark.slow),
    pytest.param("tiny", "dynamo", ORDER, marks=pytest.mark.slow),
    pytest.param("tiny", "export", ORDER_FUSE_FIRST, marks=pytest.mark.slow)])
def test_all_exact_passes_keep_loglikelihoods(preset, method, order):
    args, score = _score(preset)
    inputs = _choice_batch()[0]
    gm = capture(score, inputs, method=method)
    gm, records = run_passes(gm, _exact_passes(order), PassContext(example_inputs=inputs, model_args=args),
                             verify=True, atol=ATOL)
    _check_records(records)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.graphopt.linear_logprob.default in targets
    assert torch.ops.aten.log_softmax.int not in targets
    _compare(gm, score)


@pytest.mark.parametrize("preset", ["tiny-gqa"])
def test_all_exact_passes_through_compile_backend(preset):
    torch._dynamo.reset()
    args, score = _score(preset)
    fn = backend(pipeline=_exact_passes(ORDER), compiler="none", ctx=PassContext(model_args=args), verify=True, atol=ATOL)
    compiled = torch.compile(score, backend=fn, dynamic=True, fullgraph=True)
    _compare(compiled, score)
    assert fn.compiles >= 1
    _check_records(fn.records)
    torch._dynamo.reset()
