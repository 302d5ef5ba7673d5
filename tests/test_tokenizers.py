"""File tokenizers: sentencepiece tokenizer.model and HF tokenizer.json behind WordHashTokenizer's interface."""
import json

import pytest
import torch

from graphopt.checkpoints import CheckpointError, load_model, load_tokenizer, save_meta_checkpoint
from graphopt.checkpoints.load import load_model_structure
from graphopt.checkpoints.word_tokenizer import WORD_HASH_FILE, WordHashTokenizer, write_word_hash_tokenizer
from tests._builders import TOKENIZER_TEXT

SAMPLES = ["The dog sits on a roof.", " the man", "Hello, world!  Two  spaces", ""]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(TOKENIZER_TEXT) + "\n")
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=60,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2)
    return d / "tokenizer.model"


def test_sentencepiece_matches_library_without_bos(spm_model):
    import sentencepiece as spm
    ref = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = load_tokenizer(spm_model)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (60, ref.bos_id(), ref.eos_id()) == (60, 1, 2)
    for s in SAMPLES:
        ids = tok.encode(s)
        assert ids == ref.encode(s)
        assert tok.bos_id not in ids and all(0 <= i < 60 for i in ids)
    assert len(tok.encode(SAMPLES[0])) > 3  # really subword pieces, not one id per string
    assert tok.decode(tok.encode(SAMPLES[0])) == SAMPLES[0]
    # sentencepiece's dummy prefix: a leading space does not add a token
    assert tok.encode("the man") == tok.encode(" the man")


def test_sentencepiece_decode_spells_control_tokens_when_asked(spm_model):
    """lm-eval's hf model reads the EOS string as decode([eos], skip_special_tokens=False): "</s>", not ""."""
    tok = load_tokenizer(spm_model)
    ids = tok.encode(SAMPLES[0])
    assert tok.decode([tok.eos_id], skip_special_tokens=False) == "</s>" and tok.decode([tok.eos_id]) == ""
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id], skip_special_tokens=False) == f"<s>{SAMPLES[0]}</s>"
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == SAMPLES[0]


def test_tokenizer_json_matches_library_without_bos(hf_tokenizer_json):
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(str(hf_tokenizer_json))
    tok = load_tokenizer(hf_tokenizer_json.parent)  # a directory works too
    assert tok.vocab_size == ref.get_vocab_size() == 300
    assert (tok.bos_id, tok.eos_id) == (1, 2)  # found by their usual names
    for s in SAMPLES:
        ids = tok.encode(s)
        assert ids == ref.encode(s, add_special_tokens=False).ids
        assert ref.encode(s).ids == [1] + ids  # the library would have added BOS
    assert tok.decode(tok.encode(SAMPLES[2])) == SAMPLES[2]
    # byte-level BPE keeps the space inside the next token: " the man" != "the man"
    assert tok.encode(" the man") != tok.encode("the man")


def test_tokenizer_config_names_special_tokens(hf_tokenizer_json, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(hf_tokenizer_json.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<eos>", "eos_token": {"content": "<unk>"}}))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id) == (2, 0)


def test_load_model_finds_tokenizer_next_to_or_above_checkpoint(spm_model, hf_tokenizer_json, tmp_path):
    model, _ = load_model("tiny", seed=0)
    save_meta_checkpoint(model, tmp_path / "inside", tokenizer_vocab=spm_model)
    _, tok = load_model(str(tmp_path / "inside"))
    assert tok.vocab_size == 60 and tok.encode("a dog") == load_tokenizer(spm_model).encode("a dog")
    # Meta's release layout: llama/tokenizer.model next to llama/30B/
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "tokenizer.json").write_bytes(hf_tokenizer_json.read_bytes())
    save_meta_checkpoint(model, tmp_path / "release" / "tiny")
    loaded, tok = load_model(str(tmp_path / "release" / "tiny"))
    assert tok.vocab_size == 300
    with torch.no_grad():
        ids = torch.tensor([tok.encode("The dog sits on a roof.")])
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"tokenizer\.model: not a readable sentencepiece model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: not a readable tokenizer\.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "vocab.txt").write_text("a b c")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: unknown tokenizer format"):
        load_tokenizer(tmp_path / "vocab.txt")


def _tokenizer_free_checkpoint(tmp_path):
    d = tmp_path / "ckpt" / "7B"
    save_meta_checkpoint(load_model("tiny")[0], d)
    return d


def test_checkpoint_without_tokenizer_is_an_error_naming_where_it_looked(tmp_path):
    """A real checkpoint scored with the word-hash tokenizer would give a meaningless accuracy: no fallback."""
    d = _tokenizer_free_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{d}: no tokenizer file .*{d.parent}.*tokenizer.json or tokenizer.model"):
        load_model(str(d))
    with pytest.raises(CheckpointError, match="no tokenizer file"):
        load_model_structure(str(d))


def test_word_hash_tokenizer_is_chosen_explicitly(tmp_path):
    d = _tokenizer_free_checkpoint(tmp_path)
    assert isinstance(load_model(str(d), tokenizer="word-hash")[1], WordHashTokenizer)
    write_word_hash_tokenizer(d, 512)  # or declared in the checkpoint, as tests and benchmarks do
    tok = load_model(str(d))[1]
    assert isinstance(tok, WordHashTokenizer) and tok.vocab_size == 512
    (d / WORD_HASH_FILE).write_text('{"tokenizer": "bpe"}')
    with pytest.raises(CheckpointError, match=rf"{WORD_HASH_FILE}: expected"):
        load_model(str(d))
