"""`graphopt prune --out`: refused before any work when it would destroy something or cannot take the
result (the model itself or a folder inside it, a file, a folder that cannot be written, a folder that
holds files without --force, --ratio 0); with --force the old checkpoint's files go and the user's
stay; a folder holding a single-file and an indexed checkpoint is refused by the loader, naming both."""
from __future__ import annotations

import json

import pytest
import torch

import graphopt
from graphopt.checkpoints.errors import CheckpointError
from graphopt.cli import main
from tests.test_env_checks import _unwritable_folder

PRUNE = ["prune", "--ratio", "0.25"]


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An HF checkpoint folder (the tiny preset's random weights) and its bytes."""
    from graphopt.checkpoints.save_hf import save_hf_checkpoint
    folder = tmp_path_factory.mktemp("source") / "model"
    model, tok = graphopt.load_model("tiny")
    save_hf_checkpoint(model, folder, tok)
    return folder, _files(folder)


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: the refusals below come before the work."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(graphopt, "load_model", refuse)


@pytest.mark.parametrize("inside", [False, True])
def test_out_that_is_the_model_is_refused_and_the_model_kept(source, capsys, inside):
    folder, before = source
    out = folder / "pruned" if inside else folder
    assert main([*PRUNE, str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {'is inside' if inside else 'is'} the model being read ({folder})" in err
    assert len(err.strip().splitlines()) == 1 and _files(folder) == before
    assert main([*PRUNE, str(folder), "--out", str(out), "--force"]) == 2  # --force does not make it a new folder
    assert "the model being read" in capsys.readouterr().err and _files(folder) == before


def test_out_that_is_a_file_or_cannot_be_written_is_refused_before_loading(tmp_path, capsys, no_load):
    (tmp_path / "afile").write_text("not a folder")
    for out, msg in ((tmp_path / "afile", "is a file, not a folder"),
                     (tmp_path / "afile" / "sub", "is a file, not a folder")):
        assert main([*PRUNE, "tiny", "--out", str(out)]) == 2
        assert msg in capsys.readouterr().err
    folder = _unwritable_folder(tmp_path)
    try:
        assert main([*PRUNE, "tiny", "--out", str(folder / "pruned")]) == 2
        assert f"--out {folder / 'pruned'}: cannot be written" in capsys.readouterr().err
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_ratio_zero_is_refused(tmp_path, capsys, no_load):
    assert main(["prune", "tiny", "--ratio", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--ratio 0 removes nothing: the saved model would be an unchanged copy of tiny" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _stale_sharded_checkpoint(folder):
    """An older sharded model in folder (index + two shards + config + tokenizer), and a user's file."""
    from safetensors.torch import save_file
    folder.mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"model.norm.weight": torch.zeros(4)}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    (folder / "tokenizer.model").write_bytes(b"an old sentencepiece model")
    (folder / "notes.txt").write_text("mine")


def test_a_folder_holding_files_needs_force_which_replaces_only_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    _stale_sharded_checkpoint(out)
    before = _files(out)
    assert main([*PRUNE, "tiny", "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err and _files(out) == before
    assert main([*PRUNE, "tiny", "--out", str(out), "--force", "--output", "json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "model-00001-of-00002.safetensors, model-00002-of-00002.safetensors, model.safetensors.index.json, " \
           "tokenizer.model" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt",
                                                     "tokenizer_word_hash.json"]
    assert (out / "notes.txt").read_text() == "mine"
    model, tok = graphopt.load_model(out)  # the new model, not the stale shards
    assert model.args.hidden_dim == result["layers"]["model.layers.0"]["ffn_channels"]
    assert tok.vocab_size == model.args.vocab_size


def test_loader_refuses_a_single_file_beside_an_index(tmp_path, source, capsys):
    folder, _ = source
    stale = tmp_path / "both"
    _stale_sharded_checkpoint(stale)
    for name in ("config.json", "model.safetensors"):  # a new single-file model written over the old shards
        (stale / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"both: holds two checkpoints, model.safetensors and "
                                              r"model.safetensors.index.json"):
        graphopt.load_model(stale, tokenizer="word-hash")
    assert main(["eval", "--model", str(stale), "--tokenizer", "word-hash", "--limit", "2"]) == 2
    assert "holds two checkpoints" in capsys.readouterr().err
