"""`graphopt generate`: prompts from the command line or a file (lines, jsonl), completions printed or
written as JSON lines (never over a user's file without --force), the same completions as the Python
API (graphopt.generation.text.generate_text), and every error a user can cause in one line before the work."""
import json

import pytest
import torch

import graphopt
from graphopt.cli import main
from graphopt.generation.text import generate_text


def run(capsys, *argv):
    rc = main(["generate", *argv, "--model", "tiny", "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_prompts_on_the_command_line_print_completions(capsys):
    rc, out, err = run(capsys, "the cat sat on", "a b", "--max-new-tokens", "4", "--pipeline", "none")
    assert rc == 0
    blocks = out.split("--- ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["1 (length, 4 new tokens)", "2 (length, 4 new tokens)"]
    assert blocks[0].splitlines()[1].startswith("the cat sat on[")  # word-hash ids shown as [id]
    assert "prefill 6 tokens" in err and "decode 6 tokens" in err and "tok/s" in err


def test_jsonl_file_to_out_equals_the_python_api(capsys, tmp_path):
    prompts = ["one two three", "four", "five six seven eight nine"]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)) + "\n")
    out = tmp_path / "c.jsonl"
    rc, stdout, err = run(capsys, "--file", str(src), "--out", str(out), "--max-new-tokens", "6", "--pipeline", "exact",
                          "--slots", "2")
    assert rc == 0 and stdout == "" and f"wrote 3 completions to {out}" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    model, tok = graphopt.load_model("tiny")
    want = generate_text(model, tok, prompts, max_new_tokens=6, pipeline=None)
    assert [r["completion"] for r in rows] == [w.text for w in want]
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["prompt"] for r in rows] == prompts
    assert all(r["finish"] == "length" and r["new_tokens"] == 6 for r in rows)


def test_text_file_zero_new_tokens_and_force(capsys, tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("first prompt\n\nsecond one\n")
    out = tmp_path / "c.jsonl"
    out.write_text("a user's file\n")
    rc, _, err = run(capsys, "--file", str(src), "--out", str(out), "--max-new-tokens", "0", "--pipeline", "none")
    assert rc == 2 and "the file exists; name a new file, or add --force" in err and "model" not in err
    assert out.read_text() == "a user's file\n"
    rc, _, _ = run(capsys, "--file", str(src), "--out", str(out), "--max-new-tokens", "0", "--pipeline", "none",
                   "--force")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 0 and [(r["prompt"], r["completion"], r["new_tokens"]) for r in rows] == [
        ("first prompt", "", 0), ("second one", "", 0)]


@pytest.mark.parametrize("argv,message", [
    ([], "give the prompts on the command line or with --file"),
    (["x", "--file", "p.txt"], "give the prompts on the command line or with --file"),
    (["--file", "missing.txt"], "--file missing.txt: no such file"),
    (["--file", "{bad}"], "line 2: not JSON"),
    (["--file", "{noprompt}"], "line 1: expected an object with a \"prompt\" string"),
    (["x", "--pipeline", "exact,nosuchpass"], "--pipeline 'exact,nosuchpass': "),
    (["x", "--pipeline", "cache_attention,sdpa_attention"], "sdpa_attention"),
    (["x", "--device", "gpu"], "--device 'gpu': expected cpu, cuda or cuda:N"),
    (["x" * 2000, "--pipeline", "none", "--max-new-tokens", "8"], "prompt 1: "),
    (["x", "--stop", "\n", "--pipeline", "none"], "stop strings need a tokenizer that decodes"),
])
def test_user_errors_are_one_line_before_the_work(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "ok"}) + "\n{\"prompt\": \n")
    (tmp_path / "noprompt.jsonl").write_text(json.dumps({"text": "no prompt field"}) + "\n")
    argv = [a.replace("{bad}", "bad.jsonl").replace("{noprompt}", "noprompt.jsonl") for a in argv]
    argv = [" ".join(["w"] * 2000) if a == "x" * 2000 else a for a in argv]  # more than tiny's 256 positions
    rc, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and message in lines[-1] and lines[-1].startswith("graphopt generate: error: "), err
    assert "graph " not in err  # nothing was captured or optimised


def test_eos_ends_a_completion_unless_ignored(capsys, monkeypatch):
    """A head of zeros makes every logit equal, so the greedy token is id 0 (the first of equal maxima);
    with a tokenizer whose EOS is 0 every completion ends at once (EOS not shown), and --ignore-eos
    goes on to --max-new-tokens."""
    model, tok = graphopt.load_model("tiny")
    with torch.no_grad():
        model.output.weight.zero_()
    tok.eos_id = 0
    monkeypatch.setattr(graphopt, "load_model", lambda *a, **k: (model, tok))
    rc, out, _ = run(capsys, "a b c", "--max-new-tokens", "5", "--pipeline", "none")
    assert rc == 0 and out.splitlines() == ["--- 1 (eos, 1 new tokens)", "a b c"]
    rc, out, _ = run(capsys, "a b c", "--max-new-tokens", "5", "--pipeline", "none", "--ignore-eos")
    assert rc == 0 and out.splitlines() == ["--- 1 (length, 5 new tokens)", "a b c[0][0][0][0][0]"]
