"""GGUF files graphopt cannot load: truncated or corrupt files, not a GGUF, another architecture, a
tensor type without a dequantiser, a missing tensor: each one CheckpointError naming the file."""
import pytest

from graphopt.checkpoints import CheckpointError, load_model, load_model_structure
from tests._gguf_files import F32, Q8, gguf, hf_model, write_gguf, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, tokenizer):
    hf = hf_model("llama", len(tokenizer[0]), False)
    return write_gguf(tmp_path_factory.mktemp("good") / "m.gguf", hf, "llama", tokenizer, qtype=Q8)


@pytest.mark.parametrize("cut", [0, 3, 1000, -100])
def test_truncated_gguf_is_named_truncated(tmp_path, good_file, cut):
    """Not numpy's "cannot reshape array of size ..." from inside the reader."""
    data = good_file.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:cut])  # empty, inside the magic, inside the metadata, inside the last tensor
    says = "empty file" if cut == 0 else rf"truncated GGUF file: it ends at byte {len(data[:cut])} but"
    with pytest.raises(CheckpointError, match=rf"bad\.gguf: {says}"):
        load_model(bad)


def test_not_a_gguf_at_all(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(CheckpointError, match=r"model\.gguf: not a readable GGUF file"):
        load_model(bad)


def test_unsupported_architecture(tmp_path, tokenizer):
    hf = hf_model("llama", len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer, arch="falcon")
    with pytest.raises(CheckpointError, match=r"m\.gguf: GGUF architecture 'falcon' is not supported"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"architecture 'falcon'"):
        load_model_structure(path)


def test_quantisation_type_without_a_dequantiser(tmp_path, good_file, monkeypatch):
    """A tensor type the gguf package cannot dequantise (faked: Q8_0's dequantiser removed) is named
    with its tensor before any tensor is read."""
    from gguf import quants

    monkeypatch.delitem(quants._type_traits, Q8)
    with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'token_embd\.weight' has type Q8_0, which the "
                                              r"gguf package cannot dequantise"):
        load_model(good_file)


def test_integer_tensor_type_is_refused(tmp_path, tokenizer):
    """A real type without a dequantiser: I32 (llama.cpp writes no weights in it)."""
    hf = hf_model("llama", len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer)
    w = gguf.GGUFReader(path)
    offsets = {t.name: t for t in w.tensors}
    assert offsets["output_norm.weight"].tensor_type == F32
    # rewrite output_norm's type id in its tensor info (F32 and I32 have the same size)
    raw = bytearray(path.read_bytes())
    field = offsets["output_norm.weight"].field
    type_offset = field.offset + sum(p.nbytes for p in field.parts[:4])
    assert int.from_bytes(raw[type_offset:type_offset + 4], "little") == int(F32)
    raw[type_offset:type_offset + 4] = int(gguf.GGMLQuantizationType.I32).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"tensor 'output_norm\.weight' has type I32"):
        load_model(path)


def test_missing_tensor_and_wrong_shape_name_the_file(tmp_path, tokenizer):
    hf = hf_model("llama", len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_XX.weight", 1))
    with pytest.raises(CheckpointError, match=r"m\.gguf: checkpoint lacks 1 tensor.*layers\.1\.feed_forward\.w3"):
        load_model(path)
