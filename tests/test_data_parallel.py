"""Data-parallel replicas x tensor / pipeline sharding on a DeviceMesh (graphopt.distributed.mesh,
graphopt.distributed.data_parallel): the mesh sizes, the token-balanced split of the questions, the
checks made at YAML load, and a sweep with data_parallel 2 x tensor_parallel 2 (4 gloo processes)
and one with data_parallel 2 x 2 pipeline stages (4 gloo processes) giving the same choices and
log-likelihoods as one process."""
import numpy as np
import pytest

from graphopt.checkpoints import save_meta_checkpoint
from graphopt.checkpoints.word_tokenizer import write_word_hash_tokenizer
from graphopt.distributed.data_parallel import share_tokens, split_by_tokens
from graphopt.distributed.mesh import MeshShape, mesh_problem, mesh_shape
from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.runner.config import load_config
from graphopt.runner.yaml_source import ConfigError
from graphopt.scoring.batch import Request
from tests import _dist_workers as W


def _request(q: int, c: int, n_ctx: int, n_cont: int) -> Request:
    return Request(q, c, tuple(range(n_ctx)), tuple(range(n_cont)), n_cont)


def test_mesh_sizes_fill_the_rest_and_fold_unused_ranks_into_replicas():
    # dp 2 of world 4: a tensor_parallel run gets tp 2, a pipeline run pp 2, the reference 4 replicas
    assert mesh_shape(4, 2, 0, 0, {"tensor"}) == MeshShape(dp=2, pp=1, tp=2)
    assert mesh_shape(4, 2, 0, 0, {"pipeline"}) == MeshShape(dp=2, pp=2, tp=1)
    assert mesh_shape(4, 2, 0, 0, set()) == MeshShape(dp=4, pp=1, tp=1)
    assert mesh_shape(4, 1, 0, 0, {"tensor", "pipeline"}) == MeshShape(dp=1, pp=1, tp=4)  # stages in-process
    assert mesh_shape(8, 4, 2, 0, {"tensor"}) == MeshShape(dp=4, pp=1, tp=2)  # tp given: pp is the rest (1)
    assert mesh_shape(8, 2, 0, 4, {"tensor"}) == MeshShape(dp=8, pp=1, tp=1)  # pp 4 given: tp is the rest (1)
    assert mesh_shape(8, 2, 0, 4, {"pipeline"}) == MeshShape(dp=2, pp=4, tp=1)
    m = MeshShape(dp=2, pp=1, tp=2)
    assert [(m.replica(r), m.model_rank(r)) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_mesh_problems_name_the_sizes():
    assert mesh_problem(4, 2, 0, 0) is None and mesh_problem(4, 2, 2, 1) is None
    assert "data_parallel 3 x tensor_parallel rest x pipeline_parallel rest does not make world_size 4" in \
        mesh_problem(4, 3, 0, 0)
    assert "does not make world_size 4" in mesh_problem(4, 2, 4, 0)
    assert "does not make world_size 4" in mesh_problem(4, 1, 2, 1)
    assert "not supported" in mesh_problem(8, 2, 2, 2)
    assert "data_parallel must be >= 1, got 0" in mesh_problem(4, 0, 0, 0)


def test_split_balances_tokens_not_questions_and_keeps_questions_whole():
    # question 0 is as long as questions 1..4 together: a count split (0,1 | 2,3,4) would be unbalanced
    reqs = [_request(0, c, 40, 10) for c in range(4)]  # 200 tokens
    reqs += [_request(q, c, 8, 4) for q in range(1, 5) for c in range(4)]  # 48 each
    shares = split_by_tokens(reqs, 2)
    assert sorted(i for s in shares for i in s) == list(range(len(reqs)))  # every request once
    assert shares[0] == [0, 1, 2, 3]  # the long question alone
    assert share_tokens(reqs, shares) == [200, 192]
    for s in shares:  # whole questions, ascending order
        qs = {reqs[i].question for i in s}
        assert all(sum(r.question == q for r in reqs) == sum(reqs[i].question == q for i in s) for q in qs)
        assert s == sorted(s)
    assert split_by_tokens(reqs, 2) == shares  # every rank computes the same split


def test_split_refuses_more_replicas_than_questions():
    with pytest.raises(ValueError, match="data_parallel 3 is more than the 2 questions"):
        split_by_tokens([_request(0, 0, 3, 1), _request(1, 0, 3, 1)], 3)


RUNS = """\
  - {name: tp, capture: export, passes: [tensor_parallel]}
  - {name: pp, capture: export, passes: [pipeline_split]}
"""


def _write(tmp_path, model="tiny", world=4, dp=2, limit=6, extra=""):
    cfg = tmp_path / f"dp{world}x{dp}.yaml"
    cfg.write_text(W.sharded_sweep_yaml("dp", model, tmp_path / f"out{world}x{dp}", world, limit, RUNS, data_parallel=dp) + extra)
    return cfg


def test_load_refuses_a_mesh_that_does_not_make_world_size(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'world_size'.*key 'data_parallel'.*data_parallel 3 x tensor_parallel "
                                          r"rest x pipeline_parallel rest does not make world_size 4"):
        load_config(_write(tmp_path, world=4, dp=3))
    with pytest.raises(ConfigError, match="data_parallel 2 x tensor_parallel 4 .* does not make world_size 4"):
        load_config(_write(tmp_path, world=4, dp=2, extra="tensor_parallel: 4\n"))


def test_load_refuses_more_replicas_than_questions(tmp_path):
    with pytest.raises(ConfigError, match=r"data_parallel 4 is more than the 3 questions to score \(key 'data.limit'"):
        load_config(_write(tmp_path, world=4, dp=4, limit=3))


def test_load_refuses_a_tp_size_that_does_not_divide_the_kv_heads(tmp_path):
    args = ModelArgs(dim=96, n_layers=2, n_heads=12, n_kv_heads=4, vocab_size=128, multiple_of=32, max_seq_len=64)
    save_meta_checkpoint(init_random_weights(Transformer(args), seed=0), tmp_path / "ckpt")
    write_word_hash_tokenizer(tmp_path / "ckpt", args.vocab_size)
    # world 4 = dp 2 x tp 2: 12 query heads and 4 kv heads split; tp 3 (world 6, dp 2): 4 kv heads do not divide
    load_config(_write(tmp_path, model=tmp_path / "ckpt", world=4, dp=2))
    with pytest.raises(ConfigError, match=r"run 'tp' .*mesh data_parallel 2 x tensor_parallel 3 x pipeline 1\): "
                                          r"tensor_parallel: n_kv_heads 4 is not divisible by world_size 3"):
        load_config(_write(tmp_path, model=tmp_path / "ckpt", world=6, dp=2))


@pytest.mark.distributed
def test_dp2_x_tp2_and_dp2_x_pp2_sweep_equals_one_process(tmp_path):
    from graphopt.runner.execute import run_experiment
    model = init_random_weights(Transformer(ModelArgs.from_name("tiny-gqa")), seed=3)
    save_meta_checkpoint(model, tmp_path / "ckpt")
    write_word_hash_tokenizer(tmp_path / "ckpt", model.args.vocab_size)
    one = run_experiment(load_config(_write(tmp_path, model=tmp_path / "ckpt", world=1, dp=1)), progress=False,
                         log=lambda *a: None)
    four = run_experiment(load_config(_write(tmp_path, model=tmp_path / "ckpt", world=4, dp=2)), progress=False,
                          log=lambda *a: None)
    assert list(four["status"]) == ["ok"] * 3, four[["run", "error"]].to_string()
    assert list(four["world_size"]) == [4] * 3 and list(four["n_requests"]) == [24] * 3
    # replica 0's TP / PP ranks read only their shard / stage of the checkpoint
    assert list(four["weights_loaded"]) == ["full model", "rank shard", "rank shard"]
    from graphopt.runner.store import ResultStore
    s1, s4 = ResultStore(tmp_path / "out1x1"), ResultStore(tmp_path / "out4x2")
    for k1, k4 in zip(one["run_key"], four["run_key"]):
        a, b = s1.load_loglik(k1), s4.load_loglik(k4)
        assert a.shape == b.shape == (24,)
        # fp32, gathered back in request order: 1e-5, or fp32's rounding of a long sum (2-way TP adds its
        # partial matmul sums in another order; seen: 1.1e-5 on a -295.76 total, 3.7e-8 relative)
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-5, err_msg=f"run {k4}")
    assert list(four["acc"]) == list(one["acc"]) and list(four["acc_norm"]) == list(one["acc_norm"])
    assert (four["agree"] == 1.0).all()


def test_run_keys_tell_meshes_apart_and_keep_old_keys(tmp_path):
    from graphopt.runner.sweep import expand
    dp1, dp2 = (expand(load_config(_write(tmp_path, world=2, dp=dp, limit=4))) for dp in (1, 2))
    assert [r.key for r in dp1] != [r.key for r in dp2]  # a resumed sweep never mistakes one for the other
    assert all("mesh" not in r.config for r in dp1)  # default sizes: the key a run had before these keys
    assert dp2[0].config["mesh"] == {"data_parallel": 2}
