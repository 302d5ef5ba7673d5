"""`graphopt eval` in-process: runs on the tiny preset, prints the same numbers evaluate() computes,
reads a data file, and fails clearly on a bad path / option."""
from __future__ import annotations

import json
import re

import pytest

from graphopt.cli import main
from graphopt.data import load_hellaswag
from graphopt.data.synthetic import synthetic_raw


def _printed(out: str, name: str) -> str:
    m = re.search(rf"^{name}\s+(\S+)", out, re.M)
    assert m, f"no {name!r} line in:\n{out}"
    return m.group(1)


def _expected(rows, batch_size=1):
    from graphopt.checkpoints import load_model
    from graphopt.scoring import evaluate

    model, tok = load_model("tiny")
    return evaluate(model, tok, rows, batch_size=batch_size, progress=False)


def test_eval_tiny_synthetic(capsys):
    """The default path: the prefix tree (zero-shot: packed rows) + exact-cpu (no compile), the per-pair reference's answers."""
    assert main(["eval", "--model", "tiny", "--limit", "6", "--no-progress"]) == 0
    printed = capsys.readouterr()
    out = printed.out
    # where the time went: one line on stderr, setup split by its parts
    assert re.search(r"^time: startup \d+\.\ds, load \d+\.\ds, setup \d+\.\ds (not )?cached \((capture|kept graph) "
                     r"[^)]*compile \d+\.\ds\), scoring \d+\.\ds \(first call \d+\.\ds\); total \d+\.\ds$",
                     printed.err, re.M), printed.err
    want = _expected(load_hellaswag(None, limit=6))
    assert _printed(out, "acc") == f"{want['acc']:.4f}"
    assert _printed(out, "acc_norm") == f"{want['acc_norm']:.4f}"
    assert _printed(out, "items") == "6"
    assert re.search(r"^time\s+\d+\.\d+s", out, re.M)
    assert "tree" in out and "mkldnn_linear" in out and "compiles=0" in out and "synthetic" in out


def test_eval_pipeline_none_is_the_per_pair_reference_and_check_agrees(capsys):
    assert main(["eval", "--model", "tiny", "--limit", "6", "--no-progress", "--pipeline", "none"]) == 0
    out = capsys.readouterr().out
    assert "per_pair" in out and "passes" not in out
    assert main(["eval", "--model", "tiny", "--limit", "6", "--no-progress", "--check", "--output", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["agree"] == 1.0 and got["max_abs_dloglik"] < 1e-4 and got["n_compiles"] == 0
    assert got["acc"] == got["reference_acc"] and got["acc_norm"] == got["reference_acc_norm"]


def test_eval_jsonl_file_batched(tmp_path, capsys):
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(dict(r, label=int(r["label"]))) + "\n" for r in synthetic_raw(5, seed=11)))
    assert main(["eval", "--model", "tiny", "--data", str(path), "--batch-size", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    want = _expected(load_hellaswag(path), batch_size=3)
    assert _printed(out, "acc") == f"{want['acc']:.4f}" and _printed(out, "items") == "5"
    assert "padded" in out and str(path) in out


def test_eval_errors(tmp_path, capsys):
    missing = tmp_path / "no_such_dir"
    assert main(["eval", "--model", "tiny", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "graphopt eval: error:" in err and str(missing) in err and "not found" in err
    assert "Traceback" not in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x"], "label": 0}) + "\n")
    assert main(["eval", "--model", "tiny", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "row 0" in err and "'endings'" in err

    assert main(["eval", "--model", "tiny", "--strategy", "nope", "--limit", "1"]) == 2
    assert "unknown --strategy 'nope'" in capsys.readouterr().err
    assert main(["eval", "--model", "no-such-preset", "--limit", "1"]) == 2
    assert "no-such-preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", "--limit", "-3"])
    assert e.value.code == 2


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--data", "--split", "--limit", "--dtype", "--device", "--batch-size"):
        assert flag in out
    assert "acc_norm" in out and "synthetic" in out


def test_eval_pipeline_exact_matches_eager_and_prints_json(capsys):
    """The optimised path on a checkpoint without a YAML: same acc/acc_norm as the eager per-pair
    reference (fp32, exact pipeline), reported as one JSON object."""
    assert main(["eval", "--model", "tiny", "--limit", "8", "--pipeline", "exact", "--no-progress",
                 "--output", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = _expected(load_hellaswag(None, limit=8))
    assert got["acc"] == want["acc"] and got["acc_norm"] == want["acc_norm"] and got["n_items"] == 8
    assert got["strategy"] == "tree" and got["pipeline"][0] == "fuse_rmsnorm" and "fused_logprob" in got["pipeline"]
    assert got["tokens_processed"] < want["tokens_processed"]  # each context once
    times = got["time"]  # the time line's figures
    assert times["setup_path"] == "blocks" and times["startup_s"] > 0 and times["setup_s"] > 0
    assert {"load_s", "capture_s", "passes_s", "weights_s", "first_call_s", "scoring_s", "setup_cached"} <= set(times)


def test_eval_bad_pipeline_is_refused_before_loading(capsys):
    assert main(["eval", "--model", "no-such-model", "--pipeline", "fused_logprob,prune_lm_head"]) == 2
    err = capsys.readouterr().err
    assert "prune_lm_head must run before fused_logprob" in err and "no-such-model" not in err
