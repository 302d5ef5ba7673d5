"""`graphopt report DIR`: the screen table (speedup recomputed against the reference row, every line
<= 120 characters even with long run names and pass lists, a legend of what each run changes), the
wide table in results.md / results.csv, failed runs listed, and a folder that cannot be written still
gets its table, then one line naming the folder and the OS error (exit status 1)."""
import argparse
import json
import os
import stat

import pandas as pd
import pytest

from graphopt.runner.report import report, to_markdown, with_speedup
from graphopt.runner.report_table import legend, markdown_table, screen_table, short_names
from graphopt.runner.store import COLUMNS, ResultStore


def store_rows(root, specs: list[dict], tolerance=None) -> ResultStore:
    """Write one result row per spec (missing columns None) and experiment.json's tolerance into `root`."""
    store = ResultStore(root)
    for i, spec in enumerate(specs):
        row = {c: None for c in COLUMNS}
        row.update(order=i, run_key=f"k{i}", is_reference=i == 0, status="ok", error="", finished_at=f"t{i}")
        row.update(spec)
        store.write_row(row)
    tol = tolerance or {"acc_points": 0.5, "max_abs_dloglik": 0.5}
    (root / "experiment.json").write_text(json.dumps({"tolerance": tol}))
    return store


def _fill(tmp_path):
    specs = [("reference", "ok", 2.0, 0.50, 0.0, True), ("fast", "ok", 0.5, 0.50, 1e-5, True),
             ("bf16", "ok", 0.25, 0.40, 0.3, False), ("broken", "error", None, None, None, False)]
    return store_rows(tmp_path, [
        dict(run=name, status=status, latency_s=lat, acc=acc, acc_norm=acc, max_abs_dloglik=d, within_tolerance=tol,
             passes="a + b" if i else "-", n_params=172352,
             error="PassError: no | such pass\ntraceback" if status == "error" else "")
        for i, (name, status, lat, acc, d, tol) in enumerate(specs)])


def _long_frame(tmp_path, n_runs=9):
    """Runs named like sentences, each with 30-odd passes with options, big numbers, a long error."""
    specs = []
    for i in range(n_runs):
        passes = " + ".join(f"some_long_pass_name_{k}(option_one={k}, option_two=bfloat16)" for k in range(20 + i))
        specs.append(dict(run=f"run {i}: export + every fusion pass + packed rows + bf16 + inductor-frozen + more",
                          passes=passes if i else "-", capture="export" if i else "none", compiler="inductor-frozen",
                          scoring='packed{"max_tokens": 4096, "row_len": 2048}', dtype="bfloat16",
                          acc=0.51234, acc_norm=0.49876, agree=0.987654, max_abs_dloglik=0.000123456 * (i + 1),
                          within_tolerance=i % 2 == 0, latency_s=12345.678 / (i + 1), compile_s=98765.4321,
                          n_compiles=123, peak_mem_mb=1234567.8, n_params=70_553_706_496,
                          status="error" if i == n_runs - 1 else "ok",
                          error=("RuntimeError: " + "a very long message " * 20) if i == n_runs - 1 else ""))
    return store_rows(tmp_path, specs)


def _table_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("| run"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_speedup_against_reference(tmp_path):
    df = with_speedup(_fill(tmp_path).load()).set_index("run")
    assert df.loc["reference", "speedup"] == 1.0 and df.loc["fast", "speedup"] == 4.0
    assert df.loc["bf16", "speedup"] == 8.0 and df.loc["broken", "speedup"] != df.loc["broken", "speedup"]  # NaN


def test_report_renders_table_and_writes_files(tmp_path):
    _fill(tmp_path)
    text = report(tmp_path)
    table = _table_lines(text)
    assert len(table) == 2 + 4 and len({len(l) for l in table}) == 1  # aligned: every row as wide as the header
    header = table[0]
    for name in ("acc", "agree", "maxΔll", "tol", "lat_s", "speedup", "params", "status"):
        assert f" {name} " in header
    fast = next(l for l in table if l.startswith("| fast"))
    assert "4.00x" in fast and "172K" in fast and "1.0e-05" in fast and " yes " in fast
    broken = next(l for l in table if l.startswith("| broken"))
    assert all(not c.strip() for c in broken.split("|")[2:-2]) and " error " in broken  # no metrics
    assert "- broken: PassError: no | such pass" in text  # first line of the error, outside the table
    wide = (tmp_path / "results.md").read_text()
    assert "within_tolerance" in wide and "172,352" in wide and "| a + b" in wide
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv["run"]) == ["reference", "fast", "bf16", "broken"] and list(csv["speedup"][:3]) == [1.0, 4.0, 8.0]
    for name in ("drift_vs_speedup.png", "speedup.png"):
        path = tmp_path / name
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert "Written: results.md, results.csv, drift_vs_speedup.png, speedup.png" in text


def test_every_line_fits_120_columns_with_long_names_and_pass_lists(tmp_path, capsys):
    from graphopt.cli import main
    _long_frame(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out  # what the command prints, files written
    too_long = [l for l in text.splitlines() if len(l) > 120]
    assert not too_long, too_long
    assert "Written: results.md" in text and report(tmp_path) in text  # report() (after `graphopt run`): the same
    table = _table_lines(text)
    assert len(table) == 2 + 9 and [l.split("|")[1].strip() for l in table[2:]] == [f"#{i}" for i in range(9)]
    assert "params" in table[0] and "70.6B" in table[2] and "1.23e+06" not in text  # 1234568 MB prints whole
    for i in range(9):  # every full run name is spelled out once, in the legend
        assert text.count(f"run {i}: export + every fusion") == 1
    # the legend gives the passes that differ from the row above, not the whole list again
    assert "+some_long_pass_name_20(option_one=20, option_two=bfloat16)" in text
    assert text.count("some_long_pass_name_3(") == 1
    assert "- #8: RuntimeError: a very long message" in text and text.count("…") >= 1


def test_too_wide_columns_are_dropped_and_named(tmp_path, monkeypatch):
    import graphopt.runner.report_table as rt
    monkeypatch.setattr(rt, "SCREEN_WIDTH", 100)
    _long_frame(tmp_path)
    text = screen_table(ResultStore(tmp_path).load())
    assert max(len(l) for l in text.splitlines()) <= 100
    assert "Not shown (too wide): params" in text and "| params" not in text


def test_legend_states_changes_from_the_row_above(tmp_path):
    df = _fill(tmp_path).load()
    df["passes"] = ["-", "a + b", "a + c", "c + a"]
    df["dtype"] = ["float32", "float32", "bfloat16", "bfloat16"]
    lines = legend(df)
    assert lines[1].split() == ["reference", "dtype", "float32;", "passes", "none"]
    assert lines[2].split() == ["fast", "passes", "+a", "+b"]
    assert lines[3].split() == ["bf16", "dtype", "bfloat16;", "passes", "+c", "-b"]
    assert lines[4].split() == ["broken", "passes", "reordered:", "c", "a"]


def test_short_names_keep_short_names_and_never_collide():
    names = ["reference", "a name longer than twelve", "#1", "x"]
    assert short_names(names) == ["reference", "#1'", "#1", "x"]


def test_report_command(tmp_path, capsys):
    from graphopt.commands import report as cmd
    _fill(tmp_path)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.main(parser.parse_args([str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert "| reference" in out and "speedup.png" in out and "passes" not in _table_lines(out)[0]
    assert cmd.main(parser.parse_args([str(tmp_path), "--wide", "--no-plots"])) == 0
    out = capsys.readouterr().out
    assert " passes " in _table_lines(out)[0] and "Written" not in out


def _unwritable(path) -> bool:
    """chmod 0555 `path`; -> whether that stops this process writing in it (not when running as root)."""
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        (path / ".probe").write_text("")
    except PermissionError:
        return True
    os.unlink(path / ".probe")
    return False


def test_unwritable_folder_prints_table_then_one_line(tmp_path, capsys):
    """Read-only results folder: the table, then one line naming the folder and the OS error; exit 1.
    As root, chmod does not stop writes: then the files go (--out) to a path under a regular file."""
    from graphopt.cli import main
    results = tmp_path / "results"
    results.mkdir()
    _fill(results)
    args, target, error = [str(results)], results, "PermissionError"
    try:
        if not _unwritable(results):
            (tmp_path / "a-file").write_text("")
            target, error = tmp_path / "a-file" / "plots", "NotADirectoryError"  # mkdir under a regular file
            args += ["--out", str(target)]
        assert main(["report"] + args) == 1
    finally:
        results.chmod(0o755)
    captured = capsys.readouterr()
    assert "| reference" in captured.out and "| broken" in captured.out and "Written" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"graphopt report: plots and results.md not written: cannot write to "
                                               f"{target} ({error}")
    assert not (results / "results.md").exists() and not (results / "speedup.png").exists()
    assert main(["report", str(results), "--no-plots"]) == 0  # asking for no files is not a failure


def test_report_after_a_run_says_why_files_were_not_written(tmp_path):
    """report() (what `graphopt run` prints): a file that cannot be written ends the text with one line
    naming the folder and the OS error, after the whole table (here results.md is a directory, which
    stops root as well)."""
    _fill(tmp_path)
    (tmp_path / "results.md").mkdir()
    lines = report(tmp_path).splitlines()
    assert len(_table_lines("\n".join(lines))) == 2 + 4
    assert lines[-1].startswith(f"plots and results.md not written: cannot write to {tmp_path} (IsADirectoryError: ")
    assert "results.md" in lines[-1] and not (tmp_path / "speedup.png").exists()


def test_out_writes_files_elsewhere(tmp_path, capsys):
    from graphopt.cli import main
    _fill(tmp_path)
    out = tmp_path / "elsewhere" / "plots"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["drift_vs_speedup.png", "results.csv", "results.md",
                                                      "speedup.png"]
    assert f"Written in {out}:" in capsys.readouterr().out and not (tmp_path / "results.md").exists()


def test_missing_folder_is_a_user_error(tmp_path, capsys):
    from graphopt.cli import main
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_markdown_escapes_pipes():
    text = to_markdown(pd.DataFrame({"a": ["x|y"], "b": [1.5]}))
    assert "x\\|y" in text and text.splitlines()[1].endswith(":|")


@pytest.mark.parametrize("value,expected", [(0.0, "0"), (1.23456e-5, "1.2e-05"), (0.05178, "0.052"), (3.4, "3.4")])
def test_drift_rounding(value, expected):
    from graphopt.runner.report_table import _drift
    assert _drift(value) == expected


def test_markdown_table_aligned_or_as_the_benchmarks_write_it():
    header, rows, right = ["run", "s"], [["a", "1.5"], ["longer", "10.25"]], [False, True]
    assert markdown_table(header, rows, right).splitlines()[:2] == ["| run    |     s |", "|--------|------:|"]
    assert markdown_table(header, rows, right, pad=False) == "| run | s |\n|---|---:|\n| a | 1.5 |\n| longer | 10.25 |"
