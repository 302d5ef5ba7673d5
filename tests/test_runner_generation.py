"""The runner measures generation (`measure: [score, generate]`) on the tiny preset: each run's decode engine
built from its own passes (a pruned model decodes through its pruned step graph), prefill / decode tokens
per second at batch 1 and at the best batch, time to first token and peak memory as columns of the same
rows; a run whose passes the decode step cannot take keeps its scores and says why; the report shows the
generation table. The YAML keys are checked at load."""
from __future__ import annotations

import pandas as pd

import pytest

from graphopt.runner.config import load_config
from graphopt.runner.execute import run_experiment
from graphopt.runner.report import report
from graphopt.runner.sweep import expand
from graphopt.runner.yaml_source import ConfigError

YAML = """\
name: gen
model: tiny
data: {{limit: 3}}
warmup: 0
repeats: 1
output_dir: {out}
scoring: {{strategy: packed}}
measure: [score, generate]
generate: {{limit: 2, max_new_tokens: 5, batch_sizes: [2]}}
runs:
  - {{name: ffn 0.5, capture: export, passes: [{{name: prune_structured, ratio: 0.5, what: ffn}}, prune_lm_head, fused_logprob]}}
  - {{name: prefix attn, capture: export, passes: [sdpa_attention, prefix_attention]}}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    path = tmp / "gen.yaml"
    path.write_text(YAML.format(out=tmp / "out"))
    table = run_experiment(load_config(path), progress=False, log=lambda *a: None)
    return tmp / "out", table.set_index("run")


def test_generation_columns_in_the_rows(sweep):
    _, table = sweep
    assert list(table.index) == ["reference", "ffn 0.5", "prefix attn"] and (table["status"] == "ok").all()
    for run in ("reference", "ffn 0.5"):
        row = table.loc[run]
        assert row["gen_error"] == "", row["gen_error"]
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s_b1"] > 0 and row["ttft_s"] > 0
        assert row["best_batch"] in (1, 2) and row["decode_tok_s"] >= row["decode_tok_s_b1"]
        assert row["gen_peak_mem_mb"] > 0
    assert table.loc["reference", "gen_passes"] == "-"  # capture none: the eager model reading its cache
    passes = table.loc["ffn 0.5", "gen_passes"].split(" + ")
    assert passes[0] == "prune_structured" and "cache_attention" in passes  # the pruned model decodes
    assert table.loc["ffn 0.5", "n_params"] < table.loc["reference", "n_params"]


def test_a_run_the_decode_step_cannot_take_keeps_its_scores(sweep):
    _, table = sweep
    row = table.loc["prefix attn"]
    assert row["status"] == "ok" and row["acc"] == table.loc["reference", "acc"]
    assert "prefix_attention" in row["gen_error"] and pd.isna(row["decode_tok_s"])


def test_report_shows_the_generation_table(sweep):
    out, _ = sweep
    text = report(out, plots=False)
    assert "Generation (decode engine, greedy):" in text and "dec_t/s" in text
    gen = text[text.index("Generation (decode engine"):]
    assert "| ffn 0.5 " in gen and "Generation not measured:" in gen and "- prefix attn: " in gen
    assert max(len(line) for line in text.splitlines()) <= 120
    wide = report(out, plots=False, wide=True)
    assert "decode_tok_s_b1" in wide and "gen_passes" in wide


def _config(tmp_path, extra: str):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nmodel: tiny\nruns:\n  - {name: a, capture: none}\n" + extra)
    return path


@pytest.mark.parametrize("extra, message", [
    ("measure: [score, generat]\n", r"key 'measure.1' .*'generat' is not one of score, generate; did you mean 'generate'"),
    ("measure: [generate]\n", r"every run is scored .* measure: \[score, generate\]"),
    ("measure: [score, generate]\ngenerate: {batch_sizes: [0, 4]}\n", r"generate.batch_sizes.*positive integers"),
    ("measure: [score, generate]\ngenerate: {max_new_tokens: 0}\n", r"generate.max_new_tokens.*must be >= 1"),
    ("measure: [score, generate]\ngenerate: {prompts: nowhere.txt}\n", r"prompts file 'nowhere.txt' does not exist"),
    ("measure: [score, generate]\nworld_size: 2\ndata_parallel: 2\n", r"generate is measured in one process"),
    ("generate: {limt: 3}\n", r"unknown .*generate.limt.*did you mean 'limit'"),
])
def test_generate_keys_checked_at_load(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, extra))


def test_run_keys_change_only_when_generation_is_measured(tmp_path):
    plain = {r.name: r.key for r in expand(load_config(_config(tmp_path, "")))}
    same = {r.name: r.key for r in expand(load_config(_config(tmp_path, "generate: {limit: 3}\n")))}
    measured = {r.name: r.key for r in expand(load_config(_config(tmp_path, "measure: [score, generate]\n")))}
    assert plain == same and all(measured[n] != plain[n] for n in plain)
