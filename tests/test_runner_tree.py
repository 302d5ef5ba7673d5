"""The prefix tree is a layout of the runner like the others (scoring.strategy: tree, its options checked
when the YAML loads): a sweep with a reference and a tree run, each in its own worker, agrees with the
reference and reports the tree's forwards."""
import pytest

from graphopt.runner.config import load_config
from graphopt.runner.execute import run_experiment
from graphopt.runner.yaml_source import ConfigError

YAML = """\
name: tree
model: tiny
data: {{limit: 4}}
warmup: 0
repeats: 1
output_dir: {out}
runs:
  - {{name: reference, capture: none, scoring: {{strategy: per_pair}}}}
  - {{name: tree, capture: export, passes: exact, scoring: {{strategy: tree, options: {{max_tokens: 256{extra}}}}}}}
"""


def test_tree_run_agrees_with_the_reference(tmp_path):
    cfg = tmp_path / "tree.yaml"
    cfg.write_text(YAML.format(out=tmp_path / "out", extra=""))
    table = run_experiment(load_config(cfg), progress=False, log=lambda *a: None)
    assert list(table["status"]) == ["ok", "ok"], table[["run", "error"]].to_string()
    tree = table[table["run"] == "tree"].iloc[0]
    assert tree["agree"] == 1.0 and tree["max_abs_dloglik"] < 1e-4 and tree["n_batches"] >= 1
    # the row says where the time went, as graphopt eval's time line
    assert tree["setup_path"] == "blocks" and tree["startup_s"] > 0 and tree["setup_s"] > 0
    assert tree["passes_s"] > 0 or tree["setup_cached"]
    assert table[table["run"] == "reference"].iloc[0]["setup_path"] == "none"


def test_tree_options_are_checked_when_the_yaml_loads(tmp_path):
    cfg = tmp_path / "tree.yaml"
    cfg.write_text(YAML.format(out=tmp_path / "out", extra=", budget: 3"))
    with pytest.raises(ConfigError, match="scoring strategy 'tree' has no option 'budget'.*budget_mb"):
        load_config(cfg)
