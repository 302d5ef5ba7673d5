"""Experiment YAML validation: unknown keys, wrong types and missing paths give one clear error naming
the key, the file, the line and the closest valid key; --set overrides are validated the same way."""
import textwrap

import pytest

from graphopt.runner.config import load_config
from graphopt.runner.yaml_source import ConfigError

GOOD = """\
name: t
model: tiny
data:
  limit: 4
runs:
  - name: padded
    capture: none
    scoring: {strategy: padded}
  - name: fused
    passes: [{name: prune_lm_head}, fused_logprob]
"""


def _write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_config_loads_with_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.model == "tiny" and cfg.data.limit == 4 and cfg.data.path is None
    assert cfg.reference.capture == "none" and cfg.reference.scoring.strategy == "per_pair"
    assert cfg.runs[0].scoring.strategy == "padded" and cfg.runs[1].scoring is None
    assert [p.name for p in cfg.runs[1].passes] == ["prune_lm_head", "fused_logprob"]
    assert cfg.runs[1].passes[1].opts == {"with_linear": True}  # parsed once, defaults filled
    assert cfg.tolerance.acc_points == 0.5 and cfg.repeats == 3


def test_unknown_key_names_key_file_line_and_closest(tmp_path):
    text = GOOD.replace("    capture: none\n", "    captrue: none\n")
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "runs.0.captrue" in msg and str(p) in msg and "line 7" in msg and "'capture'" in msg, msg


def test_unknown_top_level_key(tmp_path):
    p = _write(tmp_path, GOOD + "repeets: 5\n")
    with pytest.raises(ConfigError, match=r"'repeets'.* line 11.*did you mean 'repeats'"):
        load_config(p)


def test_wrong_type_names_key_and_line(tmp_path):
    p = _write(tmp_path, GOOD.replace("  limit: 4", "  limit: four"))
    with pytest.raises(ConfigError, match=r"'data.limit'.* line 4.*expected int.*'four'"):
        load_config(p)


def test_bad_choice_suggests_closest(tmp_path):
    p = _write(tmp_path, GOOD.replace("capture: none", "capture: exprt"))
    with pytest.raises(ConfigError, match=r"runs.0.capture.*line 7.*did you mean 'export'"):
        load_config(p)


def test_missing_model_path(tmp_path):
    p = _write(tmp_path, GOOD.replace("model: tiny", f"model: {tmp_path}/no-such-checkpoint"))
    with pytest.raises(ConfigError, match=r"'model'.* line 2.*neither a model preset.*nor an existing checkpoint"):
        load_config(p)


def test_missing_data_path(tmp_path):
    p = _write(tmp_path, GOOD.replace("  limit: 4", "  limit: 4\n  path: /nowhere/hellaswag"))
    with pytest.raises(ConfigError, match=r"data.path.*line 5.*does not exist"):
        load_config(p)


def test_passes_without_capture_rejected(tmp_path):
    p = _write(tmp_path, GOOD.replace("    scoring: {strategy: padded}", "    passes: [fused_logprob]"))
    with pytest.raises(ConfigError, match=r"runs.0.passes.*capture: none"):
        load_config(p)


def test_set_overrides_are_applied_and_validated(tmp_path):
    p = _write(tmp_path, GOOD)
    cfg = load_config(p, ["data.limit=9", "runs.1.dtype=bfloat16", "tolerance.acc_points=1", "data.path=null"])
    assert cfg.data.limit == 9 and cfg.runs[1].dtype == "bfloat16" and cfg.tolerance.acc_points == 1.0
    with pytest.raises(ConfigError, match=r"'data.limt'.*--set.*did you mean 'limit'"):
        load_config(p, ["data.limt=3"])
    with pytest.raises(ConfigError, match=r"'repeats'.*--set.*expected int"):
        load_config(p, ["repeats=many"])
    with pytest.raises(ConfigError, match=r"not an index"):
        load_config(p, ["runs.7.dtype=float32"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(p, ["repeats"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"))


def test_every_shipped_experiment_validates():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 6, files
    for f in files:
        text = f.read_text()
        assert text.startswith("#") and "graphopt run" in text.split("\n\n")[0], f"{f}: header must show the command"
        cfg = load_config(f, ["model=default", "data.path=null", "device=cpu"])  # real checkpoints: the user's machine
        # (default: 8 layers, 8 / 4 heads, so the 4-way layouts of the shipped YAMLs are checked against it)
        assert cfg.name == f.stem and cfg.runs or cfg.sweep.mode != "listed"


def test_unknown_pass_and_bad_option_rejected_with_line(tmp_path):
    p = _write(tmp_path, GOOD.replace("[{name: prune_lm_head}, fused_logprob]", "[fused_logprob, fuse_rmsnrm]"))
    with pytest.raises(ConfigError, match=r"runs.1.passes.1.* line 10.*unknown pass 'fuse_rmsnrm'.*fuse_rmsnorm"):
        load_config(p)
    p = _write(tmp_path, GOOD.replace("{name: prune_lm_head}", "{name: fused_logprob, with_linaer: true}"))
    with pytest.raises(ConfigError, match=r"runs.1.passes.0.*no option 'with_linaer'.*with_linear"):
        load_config(p)
    p = _write(tmp_path, GOOD.replace("{strategy: padded}", "{strategy: padded, options: {batch: 4}}"))
    with pytest.raises(ConfigError, match=r"runs.0.scoring.options.batch.*line 8.*batch_size"):
        load_config(p)
    p = _write(tmp_path, GOOD.replace("{strategy: padded}", "{strategy: paded}"))
    with pytest.raises(ConfigError, match=r"runs.0.scoring.strategy.*did you mean 'padded'"):
        load_config(p)


def test_passes_in_a_forbidden_order_fail_at_load_naming_the_rule(tmp_path):
    p = _write(tmp_path, GOOD.replace("[{name: prune_lm_head}, fused_logprob]", "[fused_logprob, prune_lm_head]"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "runs.1" in msg and "line 9" in msg and "run 'fused'" in msg, msg
    assert "prune_lm_head must run before fused_logprob" in msg, msg


def test_an_ablation_that_breaks_a_requirement_fails_at_load(tmp_path):
    """Generated runs are checked too: dropping sdpa_attention leaves prefix_attention without it."""
    text = GOOD + "sweep: {mode: ablation, base: [sdpa_attention, prefix_attention]}\n"
    with pytest.raises(ConfigError, match="run '-sdpa_attention': prefix_attention requires sdpa_attention"):
        load_config(_write(tmp_path, text))


def test_named_pipelines_expand_where_a_pass_list_is_accepted(tmp_path):
    text = GOOD.replace("[{name: prune_lm_head}, fused_logprob]", "[exact, {name: cast_dtype, dtype: float16}]")
    cfg = load_config(_write(tmp_path, text + "sweep: {mode: powerset, over: [exact, cast_dtype]}\n"))
    from graphopt.pipeline import parse_pipeline
    exact = [p.name for p in parse_pipeline("exact")]
    assert [p.name for p in cfg.runs[1].passes] == exact + ["cast_dtype"]
    assert cfg.runs[1].passes[-1].opts["dtype"] == "float16"
    assert [len(g) for g in cfg.sweep.over] == [len(exact), 1]
    cfg = load_config(_write(tmp_path, text + "sweep: {mode: ablation, base: exact}\n", "ablation.yaml"))
    assert [p.name for p in cfg.sweep.base] == exact


def test_bad_pass_option_value_fails_at_load(tmp_path):
    text = GOOD.replace("[{name: prune_lm_head}, fused_logprob]", "[{name: cast_dtype, dtype: float8}]")
    with pytest.raises(ConfigError, match=r"runs.1.passes.0.*option 'dtype' expects one of 'bfloat16', 'float16', "
                                          r"got 'float8'"):
        load_config(_write(tmp_path, text))
