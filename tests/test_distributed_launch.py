"""launch(): torchrun env and results per rank; a failing rank stops the world promptly with its
traceback shown; load_shard reads only the rank's own Meta shard (world of 4) or lazy safetensors
slices, and the loaded sharded graph matches the eager model."""
from __future__ import annotations

from graphopt.checkpoints.save import save_meta_checkpoint
from graphopt.distributed.launch import LaunchError, launch
from tests import _dist_workers as W
from tests._builders import score_module

TOL = 1e-5


def test_launch_results_and_failing_rank(failed_launch):
    res = launch(W.echo_rank, 2, timeout_s=120)
    assert res == [{"rank": 0, "world": 2, "sum": 3.0}, {"rank": 1, "world": 2, "sum": 3.0}]
    error, elapsed = failed_launch  # rank 1 raised, rank 0 was blocked in a collective
    assert isinstance(error, LaunchError) and error.rank == 1
    assert "boom from rank 1" in str(error) and "ValueError" in str(error)
    assert all(code not in (None, 0) for code in error.exitcodes.values()), error.exitcodes  # all exited
    assert elapsed < 60, f"a failing rank took {elapsed:.0f}s to stop the world (collective timeout is 60s)"


def test_load_shard_meta_one_file_per_rank_and_safetensors(world, tmp_path):
    from safetensors.torch import save_file
    sm = score_module("tiny")
    args = sm.model.args
    meta_dir = save_meta_checkpoint(sm.model, tmp_path / "meta4", n_shards=4)
    st = tmp_path / "model.safetensors"  # Meta key names, one file: read as lazy slices
    save_file({k: v.contiguous() for k, v in sm.model.state_dict().items()}, str(st))
    layout = {"vocab_parallel": True, "embedding_parallel": True}  # Meta's own shard layout
    cases = [(str(meta_dir), layout), (str(meta_dir), {}), (str(st), {"vocab_parallel": True})]
    res = world(4).run(W.load_shard_worker, cases, timeout_s=300)
    full_layer = 4 * args.n_layers * (4 * args.dim * args.dim + 3 * args.dim * args.hidden_dim)
    for rank, per_rank in enumerate(res):
        same, replicated, lazy = per_rank
        for r in per_rank:
            assert r["diff"] <= TOL, (rank, r)
            assert not r["still_meta"], (rank, r["still_meta"])
            assert r["layer_bytes"] * 4 == full_layer  # MHA: exactly a quarter of the layers per rank
        # shard count == world size and Meta's layout: only this rank's file is ever opened
        assert same["seen"] == [f"consolidated.{rank:02d}.pth"], same["seen"]
        assert same["stats"]["files_opened"] == [f"consolidated.{rank:02d}.pth"]
        # replicated embedding / head need the pieces held by every file
        assert replicated["seen"] == [f"consolidated.{i:02d}.pth" for i in range(4)], replicated["seen"]
        assert lazy["stats"]["files_opened"] == ["model.safetensors"]
        # everything loaded for the rank: about a quarter of the model (+ replicated norms / rope tables)
        assert same["stats"]["bytes_loaded"] < 0.3 * sum(t.numel() * 4 for t in sm.state_dict().values())
