"""A user's own pass reaches `graphopt run`: a module named in the YAML (`pass_modules`, a .py path
relative to the YAML file) registers it, the loader checks it like any pass, and the worker processes
import it too, so the run rewrites the graph with it."""
import json

import pytest

from graphopt.runner.execute import run_experiment
from graphopt.runner.config import load_config
from graphopt.runner.yaml_source import ConfigError

USER_PASSES = '''
import torch
from graphopt.pipeline import PassOption, PassResult, register_pass, register_pipeline

@register_pass("test_user_swap_rsqrt", "rsqrt(x) -> 1 / sqrt(x): a user's pass (test)",
               options={"times": PassOption(int, 1, "how many times to run", min=1)})
def swap(gm, ctx):
    n = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.rsqrt.default:
            with gm.graph.inserting_before(node):
                root = gm.graph.call_function(torch.ops.aten.sqrt.default, node.args)
                inv = gm.graph.call_function(torch.ops.aten.reciprocal.default, (root,))
            node.replace_all_uses_with(inv)
            gm.graph.erase_node(node)
            n += 1
    return PassResult(gm, n > 0, {"matches": n})

register_pipeline("test_user_pipeline", "the user's pass then dead-code elimination", ["test_user_swap_rsqrt", "dce"])
'''

YAML = """\
name: user-passes
model: tiny
data: {{limit: 3}}
warmup: 0
repeats: 1
pass_modules: [{module}]
runs:
  - name: mine
    passes: test_user_pipeline
output_dir: {out}
"""


@pytest.fixture(autouse=True)
def _forget_user_passes():
    """Other tests enumerate the registry: take the user's pass and pipeline out again afterwards."""
    from graphopt import pipeline
    yield
    pipeline._REGISTRY.pop("test_user_swap_rsqrt", None)
    pipeline._PIPELINES.pop("test_user_pipeline", None)
    pipeline._loaded_modules -= {m for m in pipeline._loaded_modules if m.endswith(".py")}


def test_user_pass_module_runs_in_the_workers(tmp_path):
    (tmp_path / "my_passes.py").write_text(USER_PASSES)
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(YAML.format(module="my_passes.py", out=tmp_path / "out"))
    cfg = load_config(cfg_path)
    assert [p.name for p in cfg.runs[0].passes] == ["test_user_swap_rsqrt", "dce"]
    df = run_experiment(cfg, progress=False, log=lambda *a: None)
    row = df[df["run"] == "mine"].iloc[0]
    assert row["status"] == "ok", row["error"]
    records = json.loads(row["pass_records"])
    assert records[0]["name"] == "test_user_swap_rsqrt" and records[0]["matches"] == 5  # tiny: 2 layers x 2 + final
    assert row["agree"] == 1.0 and row["max_abs_dloglik"] < 1e-4


def test_missing_or_broken_pass_module_is_a_config_error(tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(YAML.format(module="nowhere.py", out=tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"pass_modules.*nowhere.py.*could not be imported"):
        load_config(cfg_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    cfg_path.write_text(YAML.format(module="broken.py", out=tmp_path / "out"))
    with pytest.raises(ConfigError, match="broken.py.*RuntimeError: boom"):
        load_config(cfg_path)
