"""Tied embeddings (the LM head reads the token-embedding table: Llama-3.2-1B/3B, SmolLM2, small
Qwen2.5) stay ONE tensor through every pass: the lookup and the head read one storage, the runner's
count_params counts it once, and no second copy is held. Where a pass holds two things by design
(its docstring says so) the test pins exactly what is held: quantize_int8 on a head that is still a
linear (int8 codes [D, V] + scales next to the float table the lookup reads), mkldnn_linear (the head
packed in oneDNN's layout next to the plain table). tensor_parallel with vocab_parallel cuts the one
table along the vocab: a [V/ws, D] slice that the head and the (vocab-parallel) lookup both read.

Models: tiny-tied (4 heads) and a tied 9-query / 3-kv-head model (SmolLM2-135M's head layout),
captured by export (which names the table twice, model.tok_embeddings.weight unread) and by dynamo
(one name). Tolerances, against the captured fp32 graph: exact passes 1e-4 on the per-token
log-probs; cast_dtype (bf16) 0.1 and quantize_int8 0.3 (their own tests' bounds), with the chosen
ending of the synthetic 4-way set (8 questions) unchanged; prune_structured 1e-5 against the eager
model with the pruned units silenced (its own test's check); tensor_parallel 1e-5 against the
unsharded graph.
"""
import copy
import json

import pytest
import torch

import graphopt
import graphopt.kernels  # noqa: F401 (torch.ops.graphopt.linear_logprob)
from graphopt.checkpoints import save_meta_checkpoint
from graphopt.distributed.plan import head_layout
from graphopt.graph_attrs import attr, held_numel
from graphopt.model.args import ModelArgs
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext
from graphopt.runner.worker import count_params
from graphopt.scoring.batch import ScoreModule
from tests import _dist_workers as W
from tests._builders import choice_batch, chosen_endings, model_args, random_model
from tests._prune_oracles import silenced

aten = torch.ops.aten
LINEAR_LOGPROB = torch.ops.graphopt.linear_logprob.default
TOL = {"exact": 1e-4, "bfloat16": 0.1, "int8": 0.3}
MODELS = ["tiny-tied", "gqa-9-3-tied"]  # gqa-9-3-tied: 9 query / 3 kv heads, dim 72, vocab 513


def _n_params(args: ModelArgs) -> int:
    """Parameters of Transformer(args), a tied table counted once."""
    hd = args.head_dim
    layer = (2 * args.dim * args.n_heads * hd + 2 * args.dim * args.n_kv_heads * hd  # wq, wo, wk, wv
             + 3 * args.dim * args.hidden_dim + 2 * args.dim)  # w1, w2, w3, two norms
    return args.vocab_size * args.dim * (1 if args.tie_embeddings else 2) + args.n_layers * layer + args.dim


def _layer_channels(args: ModelArgs) -> int:
    """Output channels of the layers' linears: the per-channel scales quantize_int8 adds for them."""
    hd = args.head_dim
    return args.n_layers * (args.n_heads * hd + 2 * args.n_kv_heads * hd + 2 * args.dim + 2 * args.hidden_dim)


def _setup(choice_captures, name: str, method: str):
    """(args, eager ScoreModule, inputs, owners, n_questions, n_choices, captured graph) on the choice set."""
    setup = choice_captures(name, method)
    args, score = setup[:2]
    assert score.model.output.weight is score.model.tok_embeddings.weight
    assert sum(p.numel() for p in score.parameters()) == _n_params(args)
    return setup


def _tables(gm, args) -> dict:
    """What gm holds of the table, one entry per storage (a oneDNN-packed tensor is its own):
    storage -> 'float32' | 'bfloat16' | 'float32 packed' | 'int8' ... of the [V, D] / [D, V] tensors."""
    V, D = args.vocab_size, args.dim
    held = [t for _, t in gm.named_parameters(remove_duplicate=False)]
    held += [t for _, t in gm.named_buffers(remove_duplicate=False) if t.is_mkldnn]
    out = {}
    for t in held:
        if tuple(t.shape) in ((V, D), (D, V)):
            key = ("packed", id(t)) if t.is_mkldnn else t.untyped_storage().data_ptr()
            out[key] = str(t.dtype).removeprefix("torch.") + (" packed" if t.is_mkldnn else "")
    return out


def _plain_table_readers(gm, args) -> list[torch.Tensor]:
    """The plain [V, D] tensors the graph's lookups (token embedding, the head's W[t] rows) and LM head
    (a linear, graphopt.linear_logprob) read."""
    out = []
    for n in gm.graph.nodes:
        w = (n.args[0] if n.target is aten.embedding.default
             else n.args[1] if n.target in (aten.linear.default, LINEAR_LOGPROB) else None)
        if isinstance(w, torch.fx.Node) and w.op == "get_attr":
            t = attr(gm, w.target)
            if tuple(t.shape) == (args.vocab_size, args.dim) and not t.is_mkldnn:
                out.append(t)
    return out


def _check_outputs(got, ref, tol, owners, nq, nc):
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= TOL[tol], (got - ref).abs().max().item()
    if tol != "exact":
        assert torch.equal(chosen_endings(got, owners, nq, nc), chosen_endings(ref, owners, nq, nc))


# pipeline -> (tolerance, the table as held afterwards: one entry per storage, elements held beyond the
# model's own parameters by design (args -> int))
PIPELINES = {
    "merge_qkv+merge_gate_up": (["merge_qkv", "merge_gate_up"], "exact", ["float32"], lambda a: 0),
    "prune_lm_head": (["prune_lm_head"], "exact", ["float32"], lambda a: 0),
    "fused_logprob": (["fused_logprob"], "exact", ["float32"], lambda a: 0),
    "prune_lm_head+fused_logprob": (["prune_lm_head", "fused_logprob"], "exact", ["float32"], lambda a: 0),
    "cast_dtype": (["cast_dtype"], "bfloat16", ["bfloat16"], lambda a: 0),
    "fast": (["fast"], "bfloat16", ["bfloat16"], lambda a: 0),
    # the head still a linear: int8 codes [D, V] + scales [V] next to the float table the lookup reads
    "quantize_int8": (["quantize_int8"], "int8", ["float32", "int8"],
                      lambda a: a.vocab_size * a.dim + a.vocab_size + _layer_channels(a)),
    # the head inside linear_logprob is not quantised: one (bf16) table, scales for the layers only
    "int8": (["int8"], "int8", ["bfloat16"], _layer_channels),
    # the head reads the plain table the lookup reads (oneDNN on it as it is): no packed copy of it
    "mkldnn_linear": (["mkldnn_linear"], "exact", ["float32"], lambda a: 0),
    "exact-cpu": (["exact-cpu"], "exact", ["float32"], lambda a: 0),
}


@pytest.mark.parametrize("method", ["export", "dynamo"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", list(PIPELINES))
def test_a_pass_keeps_the_tied_table_one_tensor(choice_captures, case, model, method):
    args, score, inputs, owners, nq, nc, captured = _setup(choice_captures, model, method)
    pipeline, tol, tables, extra = PIPELINES[case]
    with torch.no_grad():
        ref = captured(*inputs)
    gm, _ = run_passes(copy.deepcopy(captured), pipeline, PassContext(example_inputs=inputs, model_args=args))
    assert sorted(_tables(gm, args).values()) == sorted(tables)
    readers = _plain_table_readers(gm, args)
    assert readers and len({t.untyped_storage().data_ptr() for t in readers}) == 1  # lookup and head: one storage
    assert count_params(gm) == _n_params(args) + extra(args)
    with torch.no_grad():
        _check_outputs(gm(*inputs), ref, tol, owners, nq, nc)


@pytest.mark.parametrize("method", ["export", "dynamo"])
@pytest.mark.parametrize("model", MODELS)
def test_prune_structured_leaves_the_tied_table_alone(choice_captures, model, method):
    args, score, inputs, owners, nq, nc, captured = _setup(choice_captures, model, method)
    ratio = 0.4
    gm, (rec,) = run_passes(copy.deepcopy(captured), [("prune_structured", {"ratio": ratio, "what": "both"})],
                            PassContext(example_inputs=inputs, model_args=args))
    n_rep, hd = args.n_heads // args.n_kv_heads, args.head_dim
    removed = args.n_layers * (3 * args.dim * int(ratio * args.hidden_dim)
                               + int(ratio * args.n_kv_heads) * (2 * args.dim * n_rep * hd + 2 * args.dim * hd))
    assert rec.matches == 2 * args.n_layers and rec.stats["params_removed"] == removed
    assert list(_tables(gm, args).values()) == ["float32"]
    assert len({t.untyped_storage().data_ptr() for t in _plain_table_readers(gm, args)}) == 1
    assert count_params(gm) == _n_params(args) - removed
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), silenced(score.model, args, ratio, ratio)(*inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pipeline,method", [(["exact", "cast_dtype"], "export"), (["cast_dtype"], "export"),
                                             (["exact", "cast_dtype"], "dynamo")])
def test_optimize_counts_the_tied_table_once(pipeline, method):
    """SmolLM2-135M (tied, 9/3 heads) went from 134.5M to 162.8M parameters in a cast_dtype row: its
    vocab x dim counted, and held, twice. The same shape of model through graphopt.optimize."""
    args = model_args("gqa-9-3-tied")
    model = random_model(args)
    inputs, owners, nq, nc = choice_batch(vocab=args.vocab_size)
    torch._dynamo.reset()
    opt = graphopt.optimize(ScoreModule(model), inputs, pipeline, capture=method)
    with torch.no_grad():
        got, ref = opt(*inputs), ScoreModule(model)(*inputs)
    assert count_params(opt.graph) == _n_params(args) == count_params(model)
    assert list(_tables(opt.graph, args).values()) == ["bfloat16"]
    _check_outputs(got, ref, "bfloat16", owners, nq, nc)


@pytest.mark.distributed
def test_tensor_parallel_world2_holds_the_tied_table_once_or_as_designed(world):
    """tiny-tied on 2 gloo ranks. No cut of the table: one tensor, read by the lookup and the head.
    vocab_parallel: one [V/2, D] slice read by the head and the vocab-parallel lookup, the whole table
    released. embedding_parallel does not apply to a tied table (the head needs whole rows): alone it
    changes nothing, with vocab_parallel the one vocab slice as above."""
    cases = [{}, {"vocab_parallel": True}, {"embedding_parallel": True},
             {"vocab_parallel": True, "embedding_parallel": True}]
    res = world(2).run(W.tied_tp_worker, "tiny-tied", cases, timeout_s=300)
    args = model_args("tiny-tied")
    V, D, ws, hd = args.vocab_size, args.dim, 2, args.head_dim
    lay = head_layout(args, ws, 0)
    q_local, kv_local = lay.q_heads[1] - lay.q_heads[0], lay.kv_heads[1] - lay.kv_heads[0]
    layers = args.n_layers * (2 * D * q_local * hd + 2 * D * kv_local * hd + 3 * D * args.hidden_dim // ws + 2 * D) + D
    expected = {  # case -> (table storages' shapes, rank's parameters, lookup and head read one storage)
        0: ([(V, D)], layers + V * D, True),
        1: ([(V // ws, D)], layers + V * D // ws, True),
        2: ([(V, D)], layers + V * D, True),
        3: ([(V // ws, D)], layers + V * D // ws, True),
    }
    assert len(res) == ws
    for rank_results in res:
        for i, r in enumerate(rank_results):
            shapes, n, shared = expected[i]
            assert r["diff"] <= 1e-5, (r["options"], r["diff"])
            assert r["table_shapes"] == sorted(shapes), r
            assert r["n_params"] == n, r
            assert r["one_storage"] == shared, r
            assert r["embedding"] == r["vocab_logprob"] == (1 if i in (1, 3) else 0), r


@pytest.mark.parametrize("layout,dtype", [("safetensors", "float32"), ("bin", "bfloat16"), ("meta", "float32")])
def test_loaded_tied_checkpoint_holds_one_table(tmp_path, layout, dtype):
    """A tied 9/3-head checkpoint written here (HF: save_pretrained, which stores the table once, or a
    pytorch_model.bin holding lm_head.weight and model.embed_tokens.weight on one storage; Meta: 3
    shards, no output.weight): loaded, the head IS the embedding's Parameter; optimised, one table."""
    args = model_args("gqa-9-3-tied")
    if layout == "meta":
        ref = random_model(args, seed=5)
        save_meta_checkpoint(ref, tmp_path, n_shards=3)
    else:
        transformers = pytest.importorskip("transformers")
        cfg = transformers.LlamaConfig(hidden_size=args.dim, intermediate_size=args.hidden_dim,
                                       num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                                       num_key_value_heads=args.n_kv_heads, vocab_size=args.vocab_size,
                                       max_position_embeddings=args.max_seq_len, tie_word_embeddings=True,
                                       rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta)
        hf = transformers.LlamaForCausalLM(cfg).eval()
        assert sum(p.numel() for p in hf.parameters()) == _n_params(args)
        if layout == "safetensors":
            hf.save_pretrained(tmp_path)
        else:
            hf.config.save_pretrained(tmp_path)
            state = hf.state_dict()
            assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
            torch.save(state, tmp_path / "pytorch_model.bin")
        assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    model, _ = graphopt.load_model(str(tmp_path), dtype=dtype, tokenizer="word-hash")  # logits only
    assert model.args.tie_embeddings and model.output.weight is model.tok_embeddings.weight
    assert count_params(model) == _n_params(args) == held_numel(model.parameters())
    inputs, owners, nq, nc = choice_batch(vocab=args.vocab_size)
    opt = graphopt.optimize(ScoreModule(model), inputs, ["exact", "cast_dtype"])
    assert count_params(opt.graph) == _n_params(args)
    assert list(_tables(opt.graph, args).values()) == ["bfloat16"]


def test_count_params_counts_each_storage_once():
    w = torch.randn(8, 4)
    a, b = torch.nn.Parameter(w, requires_grad=False), torch.nn.Parameter(w, requires_grad=False)  # 2 objects
    assert held_numel([a, b, w.t(), w.view(-1)]) == 32  # one storage, one set of elements
    assert held_numel([w[:4], w[4:]]) == 32 and held_numel([w[:4], w[2:6]]) == 24  # union of what views cover
    assert held_numel([w[:, ::2]]) == 16  # a lone strided view: its own elements
    assert held_numel([torch.empty(3, 3, device="meta"), w.clone()]) == 32  # meta holds nothing
    packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
    assert held_numel([packed, w]) == 64  # a packed copy is a second tensor
    m = torch.nn.Module()
    m.p, m.q = a, b  # two Parameter objects on one storage: one tensor's worth
    m.register_buffer("rope", torch.randn(100))  # a buffer that is no weight is not a parameter
    assert count_params(m) == 32
    m.register_buffer("packed", packed)  # mkldnn_linear's packed weights are buffers, and weights
    assert count_params(m) == 64
