"""Checkpoint loaders: HF (safetensors, sharded, .bin) and Meta (1/2/4 shards) give transformers' logits;
every user-fixable problem raises CheckpointError naming the file/key."""
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from graphopt.checkpoints import (CheckpointError, load_hf_checkpoint, load_meta_checkpoint,  # noqa: E402
                                  load_model, meta_split_dim, save_meta_checkpoint)
from graphopt.checkpoints.meta import meta_shard_paths, read_meta_params  # noqa: E402
from tests._builders import randomize_hf  # noqa: E402

V, D = 96, 64
IDS = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))


def _hf_logits(hf):
    with torch.no_grad():
        return hf(input_ids=IDS).logits


def _our_logits(model):
    with torch.no_grad():
        return model(IDS)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A random GQA LlamaForCausalLM (4 heads / 2 kv heads, untied head) saved three ways."""
    cfg = transformers.LlamaConfig(hidden_size=D, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
                                   tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0)
    hf = randomize_hf(transformers.LlamaForCausalLM(cfg), seed=1)
    root = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(root / "st")
    hf.save_pretrained(root / "st_sharded", max_shard_size="100KB")
    _save_bin(hf, root / "bin", n_files=1)
    _save_bin(hf, root / "bin_sharded", n_files=2)
    return hf, _hf_logits(hf), root


def _save_bin(hf, d, n_files):
    """The pre-safetensors layout (transformers 5 no longer writes it): pytorch_model.bin, or
    pytorch_model-0000i-of-0000n.bin files with pytorch_model.bin.index.json."""
    hf.config.save_pretrained(d)
    state = hf.state_dict()
    if n_files == 1:
        torch.save(state, d / "pytorch_model.bin")
        return
    keys, weight_map = list(state), {}
    for i in range(n_files):
        name = f"pytorch_model-{i + 1:05d}-of-{n_files:05d}.bin"
        part = keys[i::n_files]
        torch.save({k: state[k] for k in part}, d / name)
        weight_map.update({k: name for k in part})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("variant,weight_file", [("st", "model.safetensors"),
                                                 ("st_sharded", "model.safetensors.index.json"),
                                                 ("bin", "pytorch_model.bin"),
                                                 ("bin_sharded", "pytorch_model.bin.index.json")])
def test_hf_directory_gives_transformers_logits(llama, variant, weight_file):
    hf, want, root = llama
    assert (root / variant / weight_file).is_file()  # the layout under test really was written
    model, tok = load_model(str(root / variant), tokenizer="word-hash")
    assert not model.training
    assert model.args.n_kv_heads == 2 and model.args.vocab_size == V and not model.args.tie_embeddings
    torch.testing.assert_close(_our_logits(model), want, atol=1e-5, rtol=1e-5)
    # the q/k permutation was undone (rows differ from HF's) and v was not touched
    assert not torch.equal(model.layers[0].attention.wq.weight, hf.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(model.layers[0].attention.wk.weight, hf.model.layers[0].self_attn.k_proj.weight)
    assert torch.equal(model.layers[0].attention.wv.weight, hf.model.layers[0].self_attn.v_proj.weight)
    assert tok.vocab_size == V


def test_sharded_index_really_has_several_files(llama):
    _, _, root = llama
    index = json.loads((root / "st_sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    assert not (root / "st_sharded" / "model.safetensors").exists()


def test_loaded_model_has_no_meta_tensors_and_float32_rope(llama):
    _, want, root = llama
    model = load_hf_checkpoint(root / "st", dtype="bfloat16")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert t.device.type == "cpu", name
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope_cos.dtype == torch.float32 and model.rope_cos.shape == (64, 8)
    assert "rope_cos" not in model.state_dict()  # still non-persistent
    torch.testing.assert_close(_our_logits(model).float(), want, atol=0.25, rtol=0.05)


@pytest.mark.parametrize("n_shards", [1, 2, 4])
def test_meta_shards_give_transformers_logits(llama, tmp_path, n_shards):
    _, want, root = llama
    save_meta_checkpoint(load_hf_checkpoint(root / "st"), tmp_path, n_shards=n_shards)
    paths = meta_shard_paths(tmp_path)
    assert [p.name for p in paths] == [f"consolidated.{i:02d}.pth" for i in range(n_shards)]
    last = torch.load(paths[-1], weights_only=True)
    assert last["tok_embeddings.weight"].shape == (V, D // n_shards)                   # split dim 1
    assert last["layers.0.attention.wk.weight"].shape == (2 * 16 // n_shards, D)       # split dim 0
    assert last["layers.1.feed_forward.w2.weight"].shape == (D, 96 // n_shards)        # split dim 1
    assert last["layers.0.attention.wo.weight"].shape == (D, D // n_shards)             # split dim 1
    assert last["layers.0.feed_forward.w1.weight"].shape == (96 // n_shards, D)        # split dim 0
    assert last["output.weight"].shape == (V // n_shards, D)                           # split dim 0
    assert last["norm.weight"].shape == (D,)                                           # replicated
    model, _ = load_model(str(tmp_path), tokenizer="word-hash")
    torch.testing.assert_close(_our_logits(model), want, atol=1e-5, rtol=1e-5)


def test_meta_split_dims():
    assert meta_split_dim("tok_embeddings.weight") == 1
    assert meta_split_dim("output.weight") == 0
    assert [meta_split_dim(f"layers.3.attention.{w}.weight") for w in ("wq", "wk", "wv", "wo")] == [0, 0, 0, 1]
    assert [meta_split_dim(f"layers.0.feed_forward.{w}.weight") for w in ("w1", "w2", "w3")] == [0, 1, 0]
    assert meta_split_dim("layers.0.attention_norm.weight") is None and meta_split_dim("norm.weight") is None
    assert meta_split_dim("rope.freqs") is None
    with pytest.raises(KeyError):
        meta_split_dim("layers.0.attention.wz.weight")


def test_meta_rope_freqs_is_ignored_and_vocab_minus_one_resolved(llama, tmp_path):
    _, want, root = llama
    save_meta_checkpoint(load_hf_checkpoint(root / "st"), tmp_path, n_shards=2, tokenizer_vocab=-1)
    assert json.loads((tmp_path / "params.json").read_text())["vocab_size"] == -1
    for p in meta_shard_paths(tmp_path):  # Meta's shards carry rope.freqs; it must be dropped on load
        state = torch.load(p, weights_only=True)
        state["rope.freqs"] = torch.ones(8)
        torch.save(state, p)
    assert read_meta_params(tmp_path).vocab_size == V
    model = load_meta_checkpoint(tmp_path)
    assert model.args.vocab_size == V
    torch.testing.assert_close(_our_logits(model), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-tied", "tiny-qwen"])
def test_meta_round_trip_tied_and_qkv_bias(tmp_path, preset):
    ref, _ = load_model(preset, seed=3)
    save_meta_checkpoint(ref, tmp_path, n_shards=2)
    model = load_meta_checkpoint(tmp_path)
    assert model.args == ref.args
    if ref.args.tie_embeddings:
        assert model.output.weight is model.tok_embeddings.weight
    torch.testing.assert_close(_our_logits(model), _our_logits(ref), atol=0, rtol=0)


def test_qwen2_bias_and_tied_embeddings(tmp_path):
    cfg = transformers.Qwen2Config(hidden_size=D, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
                                   tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)
    hf = randomize_hf(transformers.Qwen2ForCausalLM(cfg), seed=2)
    hf.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), tokenizer="word-hash")
    assert model.args.qkv_bias and model.args.tie_embeddings and model.args.rope_theta == 1e6
    assert model.output.weight is model.tok_embeddings.weight
    torch.testing.assert_close(_our_logits(model), _hf_logits(hf), atol=1e-5, rtol=1e-5)


def test_preset_and_dtypes():
    model, tok = load_model("tiny-gqa", dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16} and model.rope_sin.dtype == torch.float32
    assert not model.training and tok.vocab_size == model.args.vocab_size == 512
    a, _ = load_model("tiny", seed=1)
    b, _ = load_model("tiny", seed=1)
    assert torch.equal(a.output.weight, b.output.weight)
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny", dtype="int8")


# ---------------------------------------------------------------- errors

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_error_missing_directory_and_unknown_preset(tmp_path):
    with pytest.raises(CheckpointError, match="tiny-gq"):
        load_model("tiny-gq")  # neither a preset nor a directory; suggests tiny-gqa
    with pytest.raises(CheckpointError, match="does not exist"):
        load_meta_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="params.json.*config.json"):
        load_model(str(tmp_path), tokenizer="word-hash")  # empty directory


def test_error_missing_and_inconsistent_shards(llama, tmp_path):
    _, _, root = llama
    model = load_hf_checkpoint(root / "st")
    save_meta_checkpoint(model, tmp_path / "gap", n_shards=4)
    (tmp_path / "gap" / "consolidated.01.pth").unlink()
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth is missing"):
        load_model(str(tmp_path / "gap"), tokenizer="word-hash")

    save_meta_checkpoint(model, tmp_path / "bad", n_shards=2)
    p = tmp_path / "bad" / "consolidated.01.pth"
    state = torch.load(p, weights_only=True)
    state["layers.1.attention.wo.weight"] = state["layers.1.attention.wo.weight"][:-1]  # breaks non-split dim 0
    torch.save(state, p)
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth.*layers\.1\.attention\.wo\.weight.*concatenate"):
        load_model(str(tmp_path / "bad"), tokenizer="word-hash")

    state.pop("layers.1.attention.wo.weight")
    torch.save(state, p)
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth.*layers\.1\.attention\.wo\.weight"):
        load_model(str(tmp_path / "bad"), tokenizer="word-hash")

    save_meta_checkpoint(model, tmp_path / "nonorm", n_shards=1)
    p = tmp_path / "nonorm" / "consolidated.00.pth"
    state = torch.load(p, weights_only=True)
    state.pop("norm.weight")
    torch.save(state, p)
    with pytest.raises(CheckpointError, match=r"lacks.*'norm\.weight'"):
        load_model(str(tmp_path / "nonorm"), tokenizer="word-hash")


def test_error_shape_does_not_match_params_json(llama, tmp_path):
    _, _, root = llama
    save_meta_checkpoint(load_hf_checkpoint(root / "st"), tmp_path, n_shards=2)
    params = json.loads((tmp_path / "params.json").read_text())
    params["n_kv_heads"] = 4
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"'layers\.0\.attention\.wk\.weight' has shape \[32, 64\].*params\.json implies \[64, 64\]"):
        load_model(str(tmp_path), tokenizer="word-hash")


def test_error_shape_does_not_match_config_json(llama, tmp_path):
    _, _, root = llama
    d = _copy(root / "st", tmp_path / "st")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\['model\.layers\.0\.mlp\.gate_proj\.weight'\].*"
                                              r"\[96, 64\].*config\.json implies \[128, 64\]"):
        load_model(str(d), tokenizer="word-hash")


def test_error_not_a_llama_config(llama, tmp_path):
    _, _, root = llama
    d = _copy(root / "st", tmp_path / "st")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'gpt2'"):
        load_model(str(d), tokenizer="word-hash")
    cfg["model_type"] = "llama"
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: RoPE scaling 'yarn'"):
        load_model(str(d), tokenizer="word-hash")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_model(str(d), tokenizer="word-hash")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_error_truncated_files(llama, tmp_path):
    _, _, root = llama
    st = _copy(root / "st", tmp_path / "st")
    _truncate(st / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(str(st), tokenizer="word-hash")
    binary = _copy(root / "bin", tmp_path / "bin")
    _truncate(binary / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a readable torch checkpoint"):
        load_model(str(binary), tokenizer="word-hash")
    save_meta_checkpoint(load_hf_checkpoint(root / "st"), tmp_path / "meta", n_shards=2)
    _truncate(tmp_path / "meta" / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: not a readable torch checkpoint"):
        load_model(str(tmp_path / "meta"), tokenizer="word-hash")


def test_error_missing_weight_files(llama, tmp_path):
    _, _, root = llama
    sharded = _copy(root / "st_sharded", tmp_path / "sharded")
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"index\.json: lists weight file {victim.name}, which does not exist"):
        load_model(str(sharded), tokenizer="word-hash")
    st = _copy(root / "st", tmp_path / "st")
    (st / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights found \(expected model\.safetensors"):
        load_model(str(st), tokenizer="word-hash")


def test_mistral_config(tmp_path):
    cfg = transformers.MistralConfig(hidden_size=D, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=1, vocab_size=V, max_position_embeddings=64, sliding_window=32,
                                     tie_word_embeddings=False)
    hf = randomize_hf(transformers.MistralForCausalLM(cfg), seed=4)
    hf.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), tokenizer="word-hash")
    assert model.args.n_kv_heads == 1
    assert model.args.sliding_window == 32 and model.args.max_seq_len == 64  # windowed beyond 32 (test_family_windows)
    torch.testing.assert_close(_our_logits(model), _hf_logits(hf), atol=1e-5, rtol=1e-5)


def test_hf_without_lm_head_or_tie_flag_is_tied(llama, tmp_path):
    from safetensors.torch import load_file, save_file
    _, _, root = llama
    d = _copy(root / "st", tmp_path / "st")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("tie_word_embeddings")
    (d / "config.json").write_text(json.dumps(cfg))
    state = load_file(d / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, d / "model.safetensors")
    model = load_hf_checkpoint(d)
    assert model.args.tie_embeddings and model.output.weight is model.tok_embeddings.weight
    cfg["tie_word_embeddings"] = False  # but an explicit "untied" with no lm_head is an error
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"lacks.*'output\.weight'"):
        load_hf_checkpoint(d)
