"""`torchrun ... -m graphopt run cfg.yaml`: graphopt joins torchrun's world instead of spawning its own
processes (graphopt.runner.torchrun); only rank 0 writes rows and prints; the numbers equal one
process; a rank that fails ends every rank with its traceback and no row; a rank that never joins is
named. Two "nodes" on one machine (two torchrun invocations, c10d rendezvous on localhost) is `slow`."""
import os
import subprocess
import sys

import numpy as np
import pytest

from graphopt.distributed.groups import free_port
from graphopt.runner.execute import run_experiment
from graphopt.runner.config import load_config
from graphopt.runner.store import ResultStore

pytestmark = pytest.mark.distributed

YAML = """\
# torchrun --nproc-per-node {world} -m graphopt run this.yaml
name: torchrun
model: tiny-gqa
world_size: {world}
data_parallel: {dp}
data: {{limit: 4}}
warmup: 0
repeats: 1
output_dir: {out}
pass_modules: [{module}]
reference: {{capture: none, scoring: {{strategy: per_pair}}}}
scoring: {{strategy: shared_prefix}}
runs:
  - {{name: tp, capture: export, passes: [{passes}]}}
"""

FAILING_PASS = '''
from graphopt.pipeline import PassError, PassResult, register_pass

@register_pass("test_fail_on_model_rank_1", "raises on model rank 1 only (test)")
def fail(gm, ctx):
    if ctx.rank == 1:
        raise PassError("test_fail_on_model_rank_1: rank 1 gives up")
    return PassResult(gm, False, {"matches": 0})
'''


def _yaml(tmp_path, name, world, dp, passes="tensor_parallel"):
    module = ""
    if "test_fail_on_model_rank_1" in passes:  # only the torchrun processes import it (registered once each)
        module = tmp_path / "failing_pass.py"
        module.write_text(FAILING_PASS)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(YAML.format(world=world, dp=dp, out=tmp_path / name, module=module, passes=passes))
    return cfg


def _env():
    return dict(os.environ, GRAPHOPT_COLLECTIVE_TIMEOUT_S="60", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _torchrun(args, cwd, timeout=400):
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _one_process(tmp_path):
    cfg = load_config(_yaml(tmp_path, "one", 1, 1))
    return run_experiment(cfg, progress=False, log=lambda *a: None), ResultStore(tmp_path / "one")


def _same_as_one_process(tmp_path, name, n_runs=2):
    df1, s1 = _one_process(tmp_path)
    store = ResultStore(tmp_path / name)
    df = store.load()
    assert list(df["status"]) == ["ok"] * n_runs, df[["run", "error"]].to_string()
    for k1, k in zip(df1["run_key"], df["run_key"]):
        np.testing.assert_allclose(store.load_loglik(k), s1.load_loglik(k1), rtol=0, atol=1e-5)
    assert list(df["acc"]) == list(df1["acc"]) and (df["agree"] == 1.0).all()


def test_torchrun_two_processes_join_its_world_and_match_one_process(tmp_path):
    cfg = _yaml(tmp_path, "tr", world=2, dp=1)  # tp run: TP 2; the reference: 2 replicas
    p = _torchrun(["--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "graphopt", "run", str(cfg),
                   "--no-progress"], cwd=os.getcwd())
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("Runs (what each changes") == 1  # one report, printed by rank 0 only
    _same_as_one_process(tmp_path, "tr")
    df = ResultStore(tmp_path / "tr").load()
    assert list(df["world_size"]) == [2, 2] and list(df["weights_loaded"]) == ["full model", "full model"]


def test_a_failing_rank_ends_every_rank_with_its_traceback_and_no_row(tmp_path):
    cfg = _yaml(tmp_path, "fail", world=2, dp=1, passes="tensor_parallel, test_fail_on_model_rank_1")
    p = _torchrun(["--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "graphopt", "run", str(cfg),
                   "--no-progress"], cwd=os.getcwd(), timeout=200)
    assert p.returncode != 0
    assert "graphopt run: rank 1 failed: PassError" in p.stderr and "rank 1 gives up" in p.stderr
    assert 'File "' in p.stderr  # the failing rank's traceback
    df = ResultStore(tmp_path / "fail").load()
    assert list(df["run"]) == ["reference"]  # the failed run left no row (it re-runs on resume)


def test_a_rank_that_never_joins_is_named(tmp_path):
    env = dict(_env(), RANK="0", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    code = "from graphopt.distributed.groups import init_from_env; init_from_env(timeout_s=2)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "TimeoutError: ranks [1, 2] of 3 never joined the group at 127.0.0.1:" in p.stderr


def test_load_refuses_a_world_size_other_than_torchruns(tmp_path, monkeypatch):
    from graphopt.runner.yaml_source import ConfigError
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match=r"world_size 2, but torchrun started WORLD_SIZE=8 processes"):
        load_config(_yaml(tmp_path, "ws", world=2, dp=1))


@pytest.mark.slow
def test_two_nodes_on_one_machine_dp2_x_tp2(tmp_path):
    cfg = _yaml(tmp_path, "nodes", world=4, dp=2)
    port = free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
              f"127.0.0.1:{port}", "--rdzv-id", "graphopt-test"]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *common, "--node-rank", str(n), "-m",
                               "graphopt", "run", str(cfg), "--no-progress"], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    _same_as_one_process(tmp_path, "nodes")


def test_cuda_devices_are_counted_per_node_under_torchrun(tmp_path, monkeypatch):
    import torch

    from graphopt.runner.yaml_source import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = _yaml(tmp_path, "cuda", world=4, dp=2)
    cfg.write_text(cfg.read_text() + "device: cuda\n")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 nodes x 2 GPUs: fits
    assert load_config(cfg).world_size == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 ranks on this node's 2 GPUs: does not
    with pytest.raises(ConfigError, match="world_size 4 on cuda needs one CUDA device per rank, this machine has 2 "
                                          "for its 4 ranks"):
        load_config(cfg)
