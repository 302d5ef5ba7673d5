"""`graphopt report DIR`: markdown table from the stored rows (speedup recomputed against the reference
row), failed runs listed, plot files written and non-empty."""
import argparse
import json

from graphopt.runner.report import report, to_markdown, with_speedup
from graphopt.runner.store import COLUMNS, ResultStore


def _fill(tmp_path):
    store = ResultStore(tmp_path)
    specs = [("reference", True, "ok", 2.0, 0.50, 0.0, True), ("fast", False, "ok", 0.5, 0.50, 1e-5, True),
             ("bf16", False, "ok", 0.25, 0.40, 0.3, False), ("broken", False, "error", None, None, None, False)]
    for i, (name, ref, status, lat, acc, d, tol) in enumerate(specs):
        row = {c: None for c in COLUMNS}
        row.update(order=i, run=name, run_key=f"k{i}", is_reference=ref, status=status, latency_s=lat, acc=acc,
                   acc_norm=acc, max_abs_dloglik=d, within_tolerance=tol, passes="a + b" if i else "-",
                   n_params=172352, error="PassError: no | such pass\ntraceback" if status == "error" else "",
                   finished_at=f"t{i}")
        store.write_row(row)
    (tmp_path / "experiment.json").write_text(json.dumps({"tolerance": {"acc_points": 0.5}}))
    return store


def test_speedup_against_reference(tmp_path):
    df = with_speedup(_fill(tmp_path).load()).set_index("run")
    assert df.loc["reference", "speedup"] == 1.0 and df.loc["fast", "speedup"] == 4.0
    assert df.loc["bf16", "speedup"] == 8.0 and df.loc["broken", "speedup"] != df.loc["broken", "speedup"]  # NaN


def test_report_renders_table_and_plots(tmp_path):
    _fill(tmp_path)
    text = report(tmp_path)
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("| run"))
    table = lines[lines.index(header):]
    table = table[:next(i for i, l in enumerate(table) if not l.startswith("|"))]
    assert len(table) == 2 + 4 and len({l.count("|") for l in table}) == 1  # aligned, same column count
    assert "speedup" in header and "within_tolerance" in header
    fast = next(l for l in table if l.startswith("| fast"))
    assert "4.000" in fast and "172,352" in fast
    assert "- broken: PassError: no | such pass" in text  # first line of the error, outside the table
    for name in ("latency_vs_accuracy.png", "speedup.png"):
        path = tmp_path / name
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_report_command(tmp_path, capsys):
    from graphopt.commands import report as cmd
    _fill(tmp_path)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.main(parser.parse_args([str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert "| reference" in out and "speedup.png" in out


def test_markdown_escapes_pipes():
    import pandas as pd
    text = to_markdown(pd.DataFrame({"a": ["x|y"], "b": [1.5]}))
    assert "x\\|y" in text and text.splitlines()[1].endswith(":|")
