"""A world_size 2 sweep over a 2-shard Meta checkpoint: tensor-parallel runs never load the full
model (each rank builds it on the meta device and reads only its slices), and their
log-likelihoods equal the unsharded reference."""
import dataclasses

import pytest

from graphopt.checkpoints import save_meta_checkpoint
from graphopt.checkpoints.word_tokenizer import write_word_hash_tokenizer
from graphopt.distributed.mesh import runs_one_stage_per_rank
from graphopt.distributed.pipeline_run import StagePerRank
from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.optimize_model import Optimized
from graphopt.pipeline import parse_pipeline
from graphopt.runner import worker
from graphopt.runner.schema import ScoringConfig
from graphopt.runner.sweep import ResolvedRun
from graphopt.runner.execute import run_experiment
from graphopt.runner.config import load_config
from tests import _dist_workers as W

pytestmark = pytest.mark.distributed

RUNS = """\
  - {name: tp, capture: export, passes: [tensor_parallel]}
  - name: exact passes + tp
    capture: export
    passes: [prune_lm_head, fused_logprob, fuse_rmsnorm, fuse_rope, fuse_swiglu, sdpa_attention, tensor_parallel]
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    model = init_random_weights(Transformer(ModelArgs.from_name("tiny")), seed=4)
    save_meta_checkpoint(model, tmp / "ckpt", n_shards=2)
    write_word_hash_tokenizer(tmp / "ckpt", model.args.vocab_size)  # random weights: the test tokenizer
    cfg = tmp / "sharded.yaml"
    cfg.write_text(W.sharded_sweep_yaml("sharded", tmp / "ckpt", tmp / "out", 2, 3, RUNS))
    return load_config(cfg), run_experiment(load_config(cfg), progress=False, log=lambda *a: None)


def test_only_sharding_export_runs_load_shards(table):
    cfg, _ = table
    def run(passes):
        return ResolvedRun("r", "export", parse_pipeline(passes), "none", ScoringConfig(), "float32")
    one = dataclasses.replace(cfg, world_size=1)
    assert worker.loads_only_its_shard(cfg, run(["fuse_rope", "tensor_parallel"]))
    assert worker.loads_only_its_shard(cfg, run(["fuse_rope", "pipeline_split"]))  # its stage's weights
    assert not worker.loads_only_its_shard(cfg, run(["fuse_rope"]))
    assert not worker.loads_only_its_shard(one, run(["tensor_parallel"]))
    # stage = rank for a pipeline alone; with tensor_parallel too every rank runs every stage on its shard
    assert runs_one_stage_per_rank(cfg, run(["pipeline_split"]))
    assert not runs_one_stage_per_rank(cfg, run(["tensor_parallel", "pipeline_split"]))
    assert not runs_one_stage_per_rank(one, run(["pipeline_split"]))


def test_one_stage_per_rank_needs_one_stage_per_rank():
    from graphopt.pass_manager import run_passes
    from graphopt.pipeline import PassContext
    args, sm = W.build_score_module("tiny")
    gm = W.capture_graph(sm, W.example_batch(args))
    split, _ = run_passes(gm, [("pipeline_split", {"n_stages": 2})], PassContext(model_args=args))
    opt = Optimized(split, split)
    assert StagePerRank(opt, 2).graph is split
    with pytest.raises(ValueError, match="pipeline_split made 2 stages for world_size 3"):
        StagePerRank(opt, 3)


def test_sharded_runs_match_the_reference(table):
    _, df = table
    assert list(df["status"]) == ["ok"] * 3, df[["run", "error"]].to_string()
    runs = df[~df["is_reference"]]
    assert (runs["max_abs_dloglik"] < 1e-4).all(), runs[["run", "max_abs_dloglik"]]
    assert (runs["agree"] == 1.0).all()
    assert list(df["weights_loaded"]) == ["full model", "rank shard", "rank shard"]
    # each rank holds half the sharded layers: fewer parameters than the whole model
    full = sum(p.numel() for p in Transformer(ModelArgs.from_name("tiny")).parameters())
    assert (runs["n_params"] < full).all()


def test_pipeline_per_rank_refuses_a_compiler_before_loading(table):
    cfg, _ = table
    run = ResolvedRun("pp", "export", parse_pipeline(["pipeline_split"]), "inductor", ScoringConfig(), "float32")
    with pytest.raises(ValueError, match="run 'pp': pipeline_split over world_size 2 .* compiler must be none, "
                                         "got 'inductor'"):
        worker.measure(worker.WorkerJob(cfg, run, "never-written.npy"))
