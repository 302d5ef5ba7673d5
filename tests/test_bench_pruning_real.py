"""benchmarks/pruning_real.py's table code on a tiny random model: rows per (what, ratio) x criterion,
parameter counts that equal the pruned shapes, the unpruned row first, perplexity that equals a direct
computation, best-row choice, resumed records kept, and held-out text that is neither calibration text
nor question text."""
import json
import math

import pytest
import torch

from benchmarks import pruning_real as bench
from graphopt.data.real_text import real_text_raw
from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.data import real_text_hellaswag
from tests._builders import random_model


@pytest.fixture(scope="module")
def tiny():
    return random_model("gqa-9-3", max_seq_len=128), WordHashTokenizer(512)  # 9 / 3 heads, tied


def test_table_rows_params_and_best(tiny):
    model, tok = tiny
    rows, texts = real_text_hellaswag(3), bench.heldout_texts(3)
    records = bench.run_rows(model, tok, rows, texts, [("ffn", 0.25), ("heads", 0.34)], ["l1", "wanda"])
    assert [r["key"] for r in records] == ["none 0 -", "ffn 0.25 l1", "ffn 0.25 wanda", "heads 0.34 l1",
                                          "heads 0.34 wanda"]
    a = model.args
    per_layer_ffn = 3 * a.dim  # w1, w3 rows + w2 column per channel
    cut = a.hidden_dim - int(0.25 * a.hidden_dim)
    assert records[1]["hidden_dim"] == cut and records[1]["heads"] == "9/3"
    assert records[0]["params"] - records[1]["params"] == a.n_layers * per_layer_ffn * (a.hidden_dim - cut)
    assert records[3]["heads"] == "6/2"  # 9/3: one whole kv group out (preferred to one head per group)
    assert all(0 < r["acc_norm"] <= 1 and r["ppl"] > 1 and r["tokens_per_s"] > 0 for r in records)
    assert records[0]["removed_pct"] == 0 and all(r["removed_pct"] > 0 for r in records[1:])
    table = bench.markdown(records).splitlines()
    assert len(table) == 2 + len(records) and table[2].startswith("| none | - | ") and "| ffn 0.25 | wanda |" in table[4]
    best = bench.best_rows(records, "ffn", [0.25, 0.5])
    assert len(best) == 1 and best[0]["acc_norm"] == max(r["acc_norm"] for r in records[1:3])
    # resumed: records already done are kept as they are, not rerun
    again = bench.run_rows(model, tok, rows, texts, [("ffn", 0.25)], ["l1"], done={r["key"]: r for r in records})
    assert again == records[:2]


def test_global_budget_rows_have_their_own_keys_and_are_not_saved(tiny):
    """--budget global: keys end in 'global', the FFN widths per layer are recorded (their sum is the
    budget's), the parameter count is theirs, and best_rows (what is saved for the memory column) skips them."""
    model, tok = tiny
    a = model.args
    records = bench.run_rows(model, tok, real_text_hellaswag(2), bench.heldout_texts(2), [("ffn", 0.25)], ["l1"],
                             budget="global")
    assert [r["key"] for r in records] == ["none 0 -", "ffn 0.25 l1 global"]
    g = records[1]
    widths = g["ffn_per_layer"]
    assert sum(widths) == a.n_layers * a.hidden_dim - int(0.25 * a.n_layers * a.hidden_dim) and len(set(widths)) == 2  # the scores split it
    assert g["hidden_dim"] == f"{min(widths)}-{max(widths)}" and g["budget"] == "global"
    assert records[0]["params"] - g["params"] == 3 * a.dim * (a.n_layers * a.hidden_dim - sum(widths))
    assert "| ffn 0.25 global | l1 |" in bench.markdown(records)
    assert bench.best_rows(records, "ffn", [0.25]) == []


def test_perplexity_equals_a_direct_computation(tiny):
    model, tok = tiny
    texts = ["the cat sat on a mat while rain fell", "birds sang songs of light"]
    ppl, n = bench.perplexity(model, tok, texts)
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor(tok.encode(t))[None]
            logits = model(ids, torch.arange(ids.shape[1])[None],
                           torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()[None])
            logp = torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])
            nll -= float(logp.sum())
            count += ids.shape[1] - 1
    assert n == count and math.isclose(ppl, math.exp(nll / count), rel_tol=1e-5)


def test_heldout_text_is_neither_calibration_nor_questions():
    texts = bench.heldout_texts(40)
    assert len(texts) == 40 and all(len(t.split()) >= 40 for t in texts)
    calibration = bench.CALIBRATION.read_text()
    questions = " ".join(r["ctx"] + " " + " ".join(r["endings"]) for r in real_text_raw(120))
    for t in texts:
        sentence = t.split(". ")[0]
        assert sentence not in calibration and sentence not in questions, sentence


def test_grid_errors_name_the_item():
    with pytest.raises(SystemExit, match="'layers:0.1'"):
        bench._grid("ffn:0.1,layers:0.1")


def test_out_file_keeps_the_rows_of_earlier_runs(tmp_path, capsys):
    """A second run with another grid adds its rows to --out and keeps the first run's (they were
    overwritten by the second run's plan before); the table printed at the end shows them all."""
    out = tmp_path / "rows.json"
    common = ["--model", "tiny", "--questions", "2", "--heldout", "2", "--criteria", "l1", "--out", str(out)]
    assert bench.main(common + ["--grid", "ffn:0.25"]) == 0
    first = json.loads(out.read_text())["records"]
    assert bench.main(common + ["--grid", "ffn:0.5", "--memory-ratios", ""]) == 0
    keys = [r["key"] for r in json.loads(out.read_text())["records"]]
    assert sorted(keys) == ["ffn 0.25 l1", "ffn 0.5 l1", "none 0 -"]
    kept = {r["key"]: r for r in json.loads(out.read_text())["records"]}
    assert all(kept[r["key"]] == r for r in first)  # as written, peak RSS included
    assert "| ffn 0.25 | l1 |" in capsys.readouterr().out.split("# ")[-1]
