"""benchmarks/real_weights.py on the tiny preset (no GGUF, no compile): one record per weight set and row,
the reference agrees with itself exactly, the fp32 row agrees within fp32 rounding, the printed table has
a line per record and the margins table a line per weight set."""
import json

import pytest

from benchmarks.real_weights import COLUMNS, ROWS, main


@pytest.mark.slow  # ~25 s idle (the whole benchmark on the tiny preset): run with -m slow
def test_table_shape(tmp_path, capsys):
    out = tmp_path / "rw.json"
    assert main(["--model", "tiny", "--questions", "4", "--no-host", "--int8-compiler", "none",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    records = data["records"]
    assert [(r["weights"], r["row"]) for r in records] == [(w, row[0]) for w in ("real", "random") for row in ROWS]
    for r in records:
        assert set(COLUMNS) <= set(r)
        assert 0 <= r["agree"] <= 1 and 0 <= r["changed_acc"] <= 4 and 0 <= r["changed_norm"] <= 4
    for weights in ("real", "random"):
        ref, exact = [r for r in records if r["weights"] == weights][:2]
        assert ref["max_abs_dloglik"] == 0 and ref["agree"] == 1 and ref["x_ref_score"] == 1
        assert exact["row"] == "exact-cpu" and exact["max_abs_dloglik"] < 1e-3
    assert set(data["margins"]) == {"real", "random"} and data["margins"]["real"]["n"] == 4
    assert data["margins"]["real"] != data["margins"]["random"]  # the random set is really re-drawn
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith("| real ") or line.startswith("| random ")]
    assert len(table) == len(records) + 2  # + one margins line per weight set
    assert all(line.count("|") == 14 for line in table[:len(records)])
