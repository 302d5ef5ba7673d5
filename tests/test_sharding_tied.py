"""Tied embeddings shard and split from a checkpoint directory (issue #20): a tiny tied Hugging Face
Llama written here (save_pretrained stores the table once, as model.embed_tokens.weight) is run on
gloo worlds of CPU processes the way the runner does it: the model built on the meta device, the
graph sharded (tensor_parallel, plain and vocab_parallel) or split (pipeline_split, stage = rank),
then each rank reads only its shard / its stage's weights (worker.load_rank_weights).

Checked per rank: every request's log-likelihood equals the single-process eager model's within
1e-5 (fp32); the weights really are sharded (wq / wk / w1 shapes, the table's shape, bytes read) and
the tied table is ONE tensor where the plan keeps the lookup and the head together (whole when
replicated, the [V/ws, D] vocab slice with vocab_parallel; a pipeline's first and last stage each
hold it whole). Worlds: tiny-tied (4 query / 4 kv heads) on 2 ranks; 9 query / 3 kv heads (SmolLM2's
layout) on 3 ranks. The runner's own sweep on the tied checkpoint (the path of the issue's 'Cannot
copy out of meta tensor') closes the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.checkpoints.word_tokenizer import write_word_hash_tokenizer
from graphopt.distributed.launch import launch
from graphopt.distributed.plan import head_layout
from graphopt.model.args import ModelArgs
from tests import _dist_workers as W
from tests.test_checkpoints import _randomize

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.distributed

TOL = 1e-5  # fp32 log-likelihood of a request, sharded vs single process
LIMIT = 3  # questions (4 endings each)


def _save_tied_hf(args: ModelArgs, path, seed: int) -> str:
    cfg = transformers.LlamaConfig(hidden_size=args.dim, intermediate_size=args.hidden_dim,
                                   num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                                   num_key_value_heads=args.n_kv_heads, vocab_size=args.vocab_size,
                                   max_position_embeddings=max(args.max_seq_len, 256),  # the requests' length
                                   tie_word_embeddings=True,
                                   rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta)
    hf = _randomize(transformers.LlamaForCausalLM(cfg), seed)  # peaked attention: a wrong q/k row order shows
    with torch.no_grad():  # a smaller table: logits ~1/5 (requests ~-30 nats, where fp32 resolves 1e-5 well);
        hf.model.embed_tokens.weight.mul_(0.2)  # the layers see it through RMSNorm, unchanged
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    hf.save_pretrained(path)
    write_word_hash_tokenizer(path, args.vocab_size)  # random weights: graphopt's test tokenizer, declared
    return str(path)


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    return _save_tied_hf(W.model_args("tiny-tied"), tmp_path_factory.mktemp("tiny_tied"), seed=3)


def _layer_shapes(args: ModelArgs, ws: int) -> dict:
    """What one rank holds of each layer's wq, wk, w1 (HF's rows: [out, in]), all layers."""
    lay = head_layout(args, ws, 0)
    hd, q, kv = args.head_dim, lay.q_heads[1] - lay.q_heads[0], lay.kv_heads[1] - lay.kv_heads[0]
    return {"wq": [(q * hd, args.dim)] * args.n_layers, "wk": [(kv * hd, args.dim)] * args.n_layers,
            "w1": [(args.hidden_dim // ws, args.dim)] * args.n_layers}


def _check_tp(res: list, args: ModelArgs, ws: int, ref) -> None:
    V, D = args.vocab_size, args.dim
    full_bytes = 4 * sum(p.numel() for p in _meta_model(args).parameters())  # tied: the table once
    assert len(res) == ws
    for rank, rank_results in enumerate(res):
        for r in rank_results:
            where = f"rank {rank}/{ws} {r['case']}"
            diff = np.abs(r["loglik"].numpy() - ref.numpy()).max()
            assert diff <= TOL, f"{where}: log-likelihoods differ from the single process by {diff}"
            assert r["still_meta"] == [], where
            for k, shapes in _layer_shapes(args, ws).items():
                assert r[k] == shapes, (where, k, r[k])
            table = (V // ws, D) if r["case"].get("vocab_parallel") else (V, D)
            assert (r["lookup"], r["head"], r["one_tensor"]) == (table, table, True), (where, r)
            held = r["n_params"]  # the table once, this rank's share of the layers, the norms whole
            lay = _layer_shapes(args, ws)
            per_layer = 2 * lay["wq"][0][0] * D + 2 * lay["wk"][0][0] * D + 3 * lay["w1"][0][0] * D + 2 * D
            assert held == table[0] * table[1] + args.n_layers * per_layer + D, (where, held)
            assert r["bytes_loaded"] == 4 * held < full_bytes, (where, r["bytes_loaded"], full_bytes)


def _meta_model(args: ModelArgs):
    from graphopt.model.llama import Transformer
    with torch.device("meta"):
        return Transformer(args)


def test_tied_checkpoint_world2_tensor_parallel_and_pipeline(tiny_tied):
    args = W.model_args("tiny-tied")
    _, _, ref = W.score_checkpoint(tiny_tied, LIMIT)
    cases = [{}, {"vocab_parallel": True}, "pipeline"]
    res = [r[0] for r in launch(W.tied_checkpoint_worker, 2, args=([(tiny_tied, cases)], LIMIT), timeout_s=400)]
    _check_tp([r[:2] for r in res], args, 2, ref)
    V, D, L = args.vocab_size, args.dim, args.n_layers
    per_layer = sum(p.numel() for p in _meta_model(args).layers[0].parameters())
    for rank, r in enumerate(x[2] for x in res):  # pipeline: rank r runs layers [r*L/2, (r+1)*L/2)
        where = f"pipeline rank {rank}/2"
        diff = np.abs(r["loglik"].numpy() - ref.numpy()).max()
        assert diff <= TOL, f"{where}: log-likelihoods differ from the single process by {diff}"
        assert r["still_meta"] == [], where
        assert r["wq"] == [(D, D)] * (L // 2), (where, r["wq"])  # this stage's layers only, whole
        # the first stage looks up, the last one projects: each rank holds (and loaded) the whole tied table,
        # one tensor that both stages' get_attr hand on
        assert (r["lookup"], r["head"], r["one_tensor"]) == ((V, D), (V, D), True), (where, r)
        held = V * D + (L // 2) * per_layer + (D if rank == 1 else 0)  # + the final norm in the last stage
        assert r["n_params"] == held and r["bytes_loaded"] == 4 * held, (where, r["n_params"], held)


@pytest.fixture(scope="module")
def gqa_9_3_tied(tmp_path_factory):
    return _save_tied_hf(W.model_args("gqa-9-3-tied"), tmp_path_factory.mktemp("gqa_9_3_tied"), seed=4)


@pytest.fixture(scope="module")
def gqa_9_3_tied_meta(tmp_path_factory):
    """The same layout as a Meta checkpoint: 3 consolidated files, tok_embeddings split along dim, no output."""
    from dataclasses import replace
    from graphopt.checkpoints import save_meta_checkpoint
    from graphopt.model.llama import Transformer, init_random_weights
    path = tmp_path_factory.mktemp("gqa_9_3_tied_meta")
    args = replace(W.model_args("gqa-9-3-tied"), max_seq_len=256)  # the requests' length
    save_meta_checkpoint(init_random_weights(Transformer(args), seed=5), path, n_shards=3)
    write_word_hash_tokenizer(path, args.vocab_size)
    return str(path)


def test_tied_checkpoint_world3_odd_gqa(gqa_9_3_tied, gqa_9_3_tied_meta):
    """9 query / 3 kv heads on 3 ranks: 3 query heads and 1 kv head each; vocab 513 = 3 x 171; from a
    Hugging Face directory and from a 3-file Meta checkpoint (which has no output.weight)."""
    args = W.model_args("gqa-9-3-tied")
    ckpts = [gqa_9_3_tied, gqa_9_3_tied_meta]
    cases = [{}, {"vocab_parallel": True}]
    res = launch(W.tied_checkpoint_worker, 3, args=([(c, cases) for c in ckpts], LIMIT), timeout_s=400)
    for i, ckpt in enumerate(ckpts):
        _, _, ref = W.score_checkpoint(ckpt, LIMIT)
        _check_tp([r[i] for r in res], args, 3, ref)


RUNNER_RUNS = """\
  - {name: tp, capture: export, passes: [tensor_parallel]}
  - {name: tp vocab, capture: export, passes: [{name: tensor_parallel, vocab_parallel: true}]}
  - {name: pipeline, capture: export, passes: [pipeline_split]}
  - {name: exact tp, capture: export, passes: [exact, tensor_parallel]}
  - {name: tp exact, capture: export, passes: [tensor_parallel, exact]}
  - {name: exact pipeline, capture: export, passes: [exact, pipeline_split]}
"""


def test_runner_sweep_on_the_tied_checkpoint(tiny_tied, tmp_path):
    """graphopt run's path (worker.measure on 2 ranks), where the issue's runs ended in 'Cannot copy out of
    meta tensor' (tensor_parallel) and 'pipeline_split made stages [1]': every run ok, reading only its
    shard / stage, with the reference's log-likelihoods and what each rank 0 holds. With the exact passes
    before or after the sharding pass (merge_qkv / merge_gate_up on weightless tensors: the merged
    weight is read from its parts' rows of the checkpoint)."""
    from graphopt.runner.execute import run_experiment
    from graphopt.runner.config import load_config
    cfg = tmp_path / "tied.yaml"
    cfg.write_text(W.sharded_sweep_yaml("sharded-tied", tiny_tied, tmp_path / "out", 2, 2, RUNNER_RUNS))
    df = run_experiment(load_config(cfg), progress=False, log=lambda *a: None)
    assert list(df["status"]) == ["ok"] * 7, df[["run", "error"]].to_string()
    runs = df[~df["is_reference"]].set_index("run")
    assert (runs["max_abs_dloglik"] <= TOL).all() and (runs["agree"] == 1.0).all(), runs["max_abs_dloglik"]
    assert list(runs["weights_loaded"]) == ["rank shard"] * 6
    args = W.model_args("tiny-tied")
    V, D, L = args.vocab_size, args.dim, args.n_layers
    layer = sum(p.numel() for p in _meta_model(args).layers[0].parameters())
    sharded_layer = layer - 2 * D  # norms stay whole
    assert runs.loc["tp", "n_params"] == V * D + L * (sharded_layer // 2 + 2 * D) + D
    assert runs.loc["tp vocab", "n_params"] == V * D // 2 + L * (sharded_layer // 2 + 2 * D) + D
    assert runs.loc["pipeline", "n_params"] == V * D + (L // 2) * layer  # rank 0: the table once, its layers
