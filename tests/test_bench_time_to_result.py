"""benchmarks/time_to_result.py: the model directory and tokenizer it writes load in graphopt (same logits
as the preset) and in transformers (same token ids), its data has HellaSwag's token lengths, one timed
`graphopt eval` subprocess parses and matches the in-process scores, and the table's ratios and
agreement column. The whole --quick run with lm-eval is marked slow."""
import json

import pytest
import torch

import graphopt
from benchmarks import _ttr_setup as setup
from benchmarks._common import cache_env, run_timed
from benchmarks.time_to_result import REFERENCE, add_ratios, graphopt_argv, main, markdown_table, parse_graphopt
from graphopt.checkpoints.tokenizers import HFTokenizer, load_tokenizer
from graphopt.data import load_hellaswag
from graphopt.data.hellaswag import format_row
from graphopt.scoring import build_requests, evaluate


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return setup.write_model_dir(tmp_path_factory.mktemp("ttr") / "model", "tiny")


def test_model_dir_loads_in_graphopt_and_transformers(model_dir):
    model, tok = graphopt.load_model(model_dir)
    preset, _ = graphopt.load_model("tiny")
    ids = torch.tensor([[3, 50, 200, 7, 511]])
    torch.testing.assert_close(model(ids), preset(ids))  # the preset's weights, through the HF layout
    assert isinstance(tok, HFTokenizer) and tok.vocab_size <= model.args.vocab_size
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = "Painting: The instructor puts down the window. A young child pours"
    for s in (text, " a large bowl on the stage quickly."):
        assert hf_tok.encode(s) == hf_tok.encode(s, add_special_tokens=False) == tok.encode(s)  # no BOS either way


def test_data_has_hellaswag_token_lengths(model_dir):
    tok = load_tokenizer(model_dir)
    raw = setup.hellaswag_raw(40, tok.encode)
    assert set(raw[0]) >= {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label", "split"}
    requests = build_requests([format_row(doc, i) for i, doc in enumerate(raw)], tok)
    ctx = [len(r.context_ids) for r in requests[::4]]
    cont = [len(r.continuation_ids) for r in requests]
    assert 40 <= min(ctx) and max(ctx) <= 110 and max(ctx) - min(ctx) > 20
    assert 10 <= min(cont) and max(cont) <= 40 and max(cont) - min(cont) > 10
    assert any(doc["source_id"].startswith("wikihow") for doc in raw)
    assert raw == setup.hellaswag_raw(40, tok.encode)  # deterministic


def test_one_graphopt_eval_subprocess_parsed(model_dir, tmp_path):
    raw = setup.hellaswag_raw(4, load_tokenizer(model_dir).encode)
    data = setup.write_jsonl(tmp_path / "hs.jsonl", raw)
    run = run_timed(graphopt_argv(model_dir, data, 4, ["--pipeline", "none"]), cache_env(tmp_path / "cache"), 120)
    assert run["rc"] == 0, run["stderr"][-2000:]
    got = parse_graphopt(run, tmp_path)
    model, tok = graphopt.load_model(model_dir)
    want = evaluate(model, tok, load_hellaswag(data), strategy="per_pair", progress=False)
    assert (got["acc"], got["acc_norm"]) == (want["acc"], want["acc_norm"])
    assert run["wall_s"] > got["seconds"] > 0
    assert 100 < run["peak_rss_mb"] < 100_000  # the command's own peak RSS, MB
    assert got["t_setup_path"] == "none" and got["t_startup_s"] > 0 and got["t_scoring_s"] > 0  # its time line


def _record(command, cold_s, warm_s, acc, acc_norm, kind="graphopt", error=None, **extra):
    states = {s: {"wall_s": t, "error": error, "acc": acc, "acc_norm": acc_norm, "peak_rss_mb": 1000.0 + t, **extra}
              for s, t in (("cold", cold_s), ("warm", warm_s))}
    return {"size": 4, "command": command, "kind": kind, **states, **({"batch_size": 8} if kind == "lm_eval" else {})}


def test_table_ratios_and_agreement():
    records = [_record("lm_eval hf bs 8", 20.0, 10.0, 0.25, 0.5, kind="lm_eval"),
               _record(REFERENCE, 10.0, 5.0, 0.25, 0.5, n_compiles=0, setup_seconds=0.0, seconds=2.0),
               _record("graphopt --pipeline fast", 4.0, 2.0, 0.5, 0.25, n_compiles=1, setup_seconds=1.5, seconds=1.0,
                       t_startup_s=1.0, t_load_s=0.5, t_setup_s=1.5, t_setup_cached=False, t_scoring_s=1.0,
                       t_capture_s=0.5, t_passes_s=0.25, t_weights_s=0.5, t_first_call_s=0.25),
               _record("graphopt broken", 1.0, 1.0, None, None, error="UserError: bad"),
               _record("llama-perplexity --hellaswag (F32, 2 threads)", 8.0, 8.0, None, None, kind="llama_cpp")]
    add_ratios(records)
    assert records[1]["cold"]["x_lm_eval"] == 2.0 and records[2]["warm"]["x_lm_eval"] == 5.0
    assert records[3]["cold"]["x_lm_eval"] is None
    lines = markdown_table(records).splitlines()
    assert lines[3] == f"| {REFERENCE} | 10.0 | 5.0 | 2.00 | 2.00 | 0.250 | 0.500 | same | 0 / 0 | - | - | - | 1010 / 1005 |"
    # where the time went: startup / load / setup / scoring, cold and warm; the cold setup's parts; peak RSS
    assert lines[4].endswith("| Δ +25.0 / -25.0 pts | 1 / 1 | 1.0 / 0.5 / 1.5 / 1.0 | 1.0 / 0.5 / 1.5 / 1.0 | "
                             "0.5 + 0.2 + 0.5; 0.2 | 1004 / 1002 |")
    assert "error: UserError: bad" in lines[5]
    assert lines[6] == "| llama-perplexity --hellaswag (F32, 2 threads) | 8.0 | 8.0 | 2.50 | 1.25 | - | - | - | - | - | - | - | 1008 / 1008 |"


@pytest.mark.slow
def test_quick_with_lm_eval(tmp_path):
    pytest.importorskip("lm_eval")
    out = tmp_path / "ttr.json"
    assert main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())
    check = report["token_check"]
    assert check["same_ids"] == check["same_text"] == check["n_requests"] == 80
    records = {r["command"]: r for r in report["records"]}
    assert not [c for c, r in records.items() if r["cold"]["error"] or r["warm"]["error"]]
    assert "lm_eval hf bs 8" in records and REFERENCE in records
    assert records["graphopt (default: exact-cpu, fp32)"]["d_acc"] == records["graphopt (default: exact-cpu, fp32)"]["d_acc_norm"] == 0


def test_commands_and_reference_up_to_choose_what_is_timed(monkeypatch, tmp_path):
    """--commands / --reference-up-to: only the chosen graphopt commands run (lm-eval as asked)."""
    import benchmarks.time_to_result as ttr

    ran = []

    def fake(argv_of, out, timeout, parse, once=False):
        ran.append(out.name)
        return {state: {"wall_s": 1.0, "error": None, "acc": 0.5, "acc_norm": 0.5} for state in ("cold", "warm")}

    monkeypatch.setattr(ttr, "cold_and_warm", fake)
    prep = {"model_dir": tmp_path, "data": {5: tmp_path / "d.jsonl"}, "tasks": {5: "t"}, "task_dir": tmp_path}
    records = ttr.time_size(5, prep, tmp_path, [8], True, None, reference=False,
                            commands={ttr.SHORT_NAMES["default"], ttr.SHORT_NAMES["fast-cpu"]})
    assert [r["command"] for r in records] == ["lm_eval hf bs 8", ttr.SHORT_NAMES["default"], ttr.SHORT_NAMES["fast-cpu"]]
    assert ran == ["n5-lm_eval-bs8", "n5-graphopt-1", "n5-graphopt-2"]
    assert records[1]["cold"]["x_lm_eval"] == 1.0 and records[1]["d_acc"] == 0  # no reference row: lm-eval's acc
