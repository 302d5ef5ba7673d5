"""Files graphopt did not write are never touched: every command that writes (`graphopt run`, `report`,
`prune`, `cache --clear`, and lm-eval's output through `graphopt lm-eval --output_path`) is run against
a folder that also holds the user's own files (top level, a subfolder, a hidden file), and each of
them must keep its bytes and its modification time. Tiny preset, two or four rows: seconds each."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from graphopt.cli import main

YAML = """\
name: user-files
model: tiny
data: {{limit: 2}}
warmup: 0
repeats: 1
output_dir: {out}
runs:
  - {{name: padded, capture: none, scoring: {{strategy: padded, options: {{batch_size: 8}}}}}}
"""


def _plant(folder: Path) -> dict[Path, tuple[bytes, int]]:
    """The user's own files in folder; -> {path: (bytes, mtime_ns)} to compare with afterwards."""
    files = {folder / "notes.txt": b"my notes\n", folder / "mine" / "data.csv": b"a,b\n1,2\n",
             folder / ".my-settings": b"keep=1\n", folder / "results-by-hand.md": b"| mine |\n"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a time no write of today's can produce
    return {p: (data, p.stat().st_mtime_ns) for p, data in files.items()}


def _assert_untouched(planted: dict[Path, tuple[bytes, int]]) -> None:
    for path, (data, mtime) in planted.items():
        assert path.is_file(), f"{path} was removed"
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, f"{path} was changed"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """`graphopt run` into a folder holding the user's files; -> (folder, planted)."""
    out = tmp_path_factory.mktemp("user_files") / "results"
    planted = _plant(out)
    cfg = out.parent / "exp.yaml"
    cfg.write_text(YAML.format(out=out))
    assert main(["run", str(cfg), "--no-progress"]) == 0
    return out, planted


def test_run_keeps_the_users_files(experiment):
    out, planted = experiment
    assert list((out / "rows").glob("*.parquet")), "the run wrote no rows"
    _assert_untouched(planted)


def test_report_keeps_the_users_files(experiment, tmp_path, capsys):
    out, planted = experiment
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").is_file()
    elsewhere = _plant(tmp_path / "elsewhere")  # --out into another folder of the user's
    assert main(["report", str(out), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "results.csv").is_file()
    _assert_untouched(planted)
    _assert_untouched(elsewhere)


def test_prune_keeps_the_users_files(tmp_path, capsys):
    out = tmp_path / "pruned"
    planted = _plant(out)
    assert main(["prune", "tiny", "--ratio", "0.25", "--out", str(out)]) == 2  # not empty: refused
    assert "--force" in capsys.readouterr().err and not (out / "config.json").exists()
    assert main(["prune", "tiny", "--ratio", "0.25", "--out", str(out), "--force"]) == 0
    assert (out / "model.safetensors").is_file()
    _assert_untouched(planted)


def test_cache_clear_keeps_the_users_files(tmp_path, monkeypatch, capsys):
    from graphopt import cache_store
    root = tmp_path / "cache"
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(root))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    planted = _plant(root)
    assert main(["cache", "--clear"]) == 2  # no marker: not graphopt's folder
    _assert_untouched(planted)
    cache_store.put("graph", "k1", b"x" * 100)  # graphopt uses the folder: marker, entries
    (root / "inductor-torch0.0").mkdir()
    (root / "inductor-torch0.0" / "x.so").write_bytes(b"\0" * 10)
    assert main(["cache", "--clear"]) == 0
    assert "kept what graphopt did not write" in capsys.readouterr().out
    assert not (root / "entries").exists() and not (root / "inductor-torch0.0").exists()
    _assert_untouched(planted)


def test_lm_eval_output_keeps_the_users_files(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    rows = tmp_path / "tasks" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text("".join(json.dumps({"q": f"the man walks {i}", "a": ["home", "away"], "label": i % 2}) + "\n"
                            for i in range(4)))
    (tmp_path / "tasks" / "user_files_task.yaml").write_text(
        f"task: user_files_task\ndataset_path: json\ndataset_name: null\nvalidation_split: validation\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(rows))}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_target: label\ndoc_to_choice: a\n"
        "metric_list:\n  - metric: acc\n")
    out = tmp_path / "out"
    planted = _plant(out)
    code = main(["lm-eval", "--model", "graphopt", "--model_args", "pretrained=tiny,pipeline=none,progress=False",
                 "--device", "cpu", "--tasks", "user_files_task", "--include_path", str(tmp_path / "tasks"),
                 "--output_path", str(out), "--log_samples"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert list(out.rglob("results_*.json")) and list(out.rglob("samples_*.jsonl"))
    _assert_untouched(planted)
