"""Inputs that would fail deep inside the work are refused when they load, in one line naming the file
(and row): a data row with an empty ending, a tokenizer whose ids index past the model's embedding, a
split asked of data that holds only one."""
from __future__ import annotations

import json
import re

import pytest

from graphopt.checkpoints import CheckpointError, load_model, save_meta_checkpoint
from graphopt.checkpoints.load import load_model_structure
from graphopt.checkpoints.word_tokenizer import write_word_hash_tokenizer
from graphopt.cli import main
from graphopt.data import load_hellaswag
from graphopt.data.synthetic import synthetic_raw


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("ending,says", [("", "ending 2 is empty; every ending needs at least one character"),
                                         ("[header]", "ending 2 is empty after lm-eval's preprocessing "
                                                      "(it was '[header]')")])
def test_a_row_with_an_empty_ending_is_refused_when_it_loads(tmp_path, capsys, ending, says):
    """It failed in an assert after the whole set was scored (and passed silently under python -O)."""
    rows = synthetic_raw(3)
    rows[1]["endings"][2] = ending
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"rows\.jsonl: row 1: field 'endings': {re.escape(says)}"):
        load_hellaswag(path)
    assert main(["eval", "--model", "no-such-model", "--data", str(path)]) == 2  # before the model loads
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 1" in err and "no-such-model" not in err


def _checkpoint(d, vocab_of_tokenizer: int):
    save_meta_checkpoint(load_model("tiny")[0], d)  # embedding: 512 rows
    write_word_hash_tokenizer(d, vocab_of_tokenizer)
    return d


def test_a_tokenizer_larger_than_the_embedding_is_refused_naming_both_sizes(tmp_path, capsys):
    """Its ids 512.. would end in 'IndexError: index out of range in self' inside the graph."""
    d = _checkpoint(tmp_path / "ckpt", 600)
    want = rf"{d}: the tokenizer has 600 tokens but the model's embedding only 512 rows, so ids 512\.\.599"
    with pytest.raises(CheckpointError, match=want):
        load_model(str(d))
    with pytest.raises(CheckpointError, match=want):
        load_model_structure(str(d))
    assert main(["eval", "--model", str(d), "--limit", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "600 tokens" in err and "512 rows" in err and "Traceback" not in err


def test_an_embedding_larger_than_the_tokenizer_is_fine(tmp_path):
    """Real checkpoints pad the embedding to a round size (Qwen2.5: 151936 rows for 151665 tokens)."""
    d = _checkpoint(tmp_path / "ckpt", 500)
    model, tok = load_model(str(d))
    assert (tok.vocab_size, model.args.vocab_size) == (500, 512)


def test_a_split_is_refused_where_there_is_no_split_to_choose(tmp_path, capsys):
    """--split was ignored for a single file (and the synthetic set) while printed as used."""
    path = _jsonl(tmp_path / "hellaswag_val.jsonl", synthetic_raw(3))
    for data in (path, None):
        with pytest.raises(ValueError, match=r"split 'train': .*holds a single split and is read whole"):
            load_hellaswag(data, split="train")
    assert len(load_hellaswag(path)) == 3  # the default split reads the file whole, as before
    assert main(["eval", "--model", "tiny", "--data", str(path), "--split", "test", "--no-progress"]) == 2
    assert f"split 'test': {path} is one file" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny", "--data", str(path), "--no-progress"]) == 0
    data_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("data"))
    assert "split=" not in data_line and data_line.endswith("rows=3")


def test_a_split_asked_of_one_file_is_a_config_error_naming_the_key(tmp_path):
    from graphopt.runner.config import load_config
    from graphopt.runner.yaml_source import ConfigError

    path = _jsonl(tmp_path / "rows.jsonl", synthetic_raw(3))
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"name: x\nmodel: tiny\ndata: {{path: {path}, split: train}}\n"
                   "runs:\n  - {name: a, capture: none}\n")
    with pytest.raises(ConfigError, match=r"key 'data\.split' in .*x\.yaml line 3: split 'train': .* is one file"):
        load_config(cfg)
