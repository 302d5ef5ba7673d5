"""Llama-3.1/3.2 GGUFs carry the llama3 RoPE scaling as rope_freqs.weight: read as per-frequency
divisors they give transformers' llama3 logits, survive to_dict, a Meta save and a sharded load, and a
tensor of the wrong shape is a CheckpointError naming the file."""
import numpy as np
import pytest
import torch

from graphopt.checkpoints import CheckpointError, load_model
from tests._builders import randomize_hf, score_inputs, score_module
from tests._gguf_files import HEAD_DIM, N_HEADS, N_KV, TEXT, hf_logits_of, hf_model, logits_of, transformers, write_gguf


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def _llama3_rope_freqs(cfg) -> np.ndarray:
    """rope_freqs.weight as llama.cpp stores Llama-3.1/3.2's llama3 scaling: one divisor per frequency,
    default inv_freq / llama3 inv_freq (ggml's rope divides each frequency by it), F32 [head_dim // 2]."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    llama3, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    default = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM))
    return (default / llama3).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def llama31(tmp_path_factory, gguf_tokenizer):
    """(hf with llama3 RoPE scaling, its GGUF with rope_freqs.weight, the divisors, 40 token ids)."""
    vocab = len(gguf_tokenizer[0])
    cfg = transformers.LlamaConfig(hidden_size=N_HEADS * HEAD_DIM, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=N_HEADS, num_key_value_heads=N_KV, vocab_size=vocab,
                                   max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE))
    hf = randomize_hf(transformers.LlamaForCausalLM(cfg), seed=5)
    divisors = _llama3_rope_freqs(cfg)
    assert divisors.shape == (HEAD_DIM // 2,) and divisors[0] > 1 and divisors[-1] == 8.0  # a band interpolated
    path = write_gguf(tmp_path_factory.mktemp("llama31") / "m.gguf", hf, "llama", gguf_tokenizer,
                      extra=lambda w: w.add_tensor("rope_freqs.weight", divisors))
    ids = torch.tensor([gguf_tokenizer[3].encode(" ".join(TEXT), add_special_tokens=False)[:40]])
    assert ids.shape == (1, 40)
    return hf, path, divisors, ids


def test_llama31_rope_freqs_give_transformers_llama3_logits(llama31):
    """Llama-3.1/3.2 GGUFs carry the llama3 RoPE scaling as rope_freqs.weight (divisors of the base
    frequencies): read into RopeScaling("freq_factors"), the logits are transformers' llama3 model's."""
    hf, path, divisors, ids = llama31
    model, _ = load_model(path)
    s = model.args.rope_scaling
    assert s.kind == "freq_factors" and s.factors == tuple(float(d) for d in divisors)
    ours, ref = logits_of(model, ids), hf_logits_of(hf, ids)
    diff = (ours - ref).abs().max().item()
    print(f"llama3 rope_freqs GGUF vs transformers llama3: max |dlogit| {diff:.3g} over {ids.shape[1]} tokens")
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    from dataclasses import replace

    from graphopt.model import Transformer
    plain = Transformer(replace(model.args, rope_scaling=None))  # the scaling matters on these inputs
    plain.load_state_dict(model.state_dict())
    assert (logits_of(plain.eval(), ids) - ref).abs().max() > 1e-2


def test_rope_freqs_survive_to_dict_meta_save_and_load_shard(llama31, tmp_path):
    """The divisors go through ModelArgs.to_dict (JSON), save_meta_checkpoint's params.json and back, and
    load_shard rebuilds the same RoPE tables from them."""
    import json

    from graphopt.checkpoints import load_meta_checkpoint, save_meta_checkpoint
    from graphopt.distributed.load_shard import load_shard
    from graphopt.graph_capture import capture
    from graphopt.model import ModelArgs
    from graphopt.scoring.batch import ScoreModule

    _, path, _, ids = llama31
    model, _ = load_model(path)
    assert ModelArgs(**json.loads(json.dumps(model.args.to_dict()))) == model.args
    save_meta_checkpoint(model, tmp_path, n_shards=2)
    assert json.loads((tmp_path / "params.json").read_text())["rope_scaling"]["kind"] == "freq_factors"
    back = load_meta_checkpoint(tmp_path)
    assert back.args == model.args
    torch.testing.assert_close(back.rope_cos, model.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(logits_of(back, ids), logits_of(model, ids), atol=0, rtol=0)

    x = score_inputs(2, 40, 7, vocab=model.args.vocab_size, seed=3)  # positions up to 39: every band in use
    gm = capture(score_module(model.args, seed=1), x).to("meta")
    # weightless, as a sharded worker's graph: load_shard fills what is on the meta device
    load_shard(gm, tmp_path, 0, 1, model.args)
    with torch.no_grad():
        torch.testing.assert_close(gm(*x), ScoreModule(model)(*x), atol=1e-5, rtol=0)


def test_rope_freqs_of_the_wrong_shape(tmp_path, gguf_tokenizer):
    hf = hf_model("llama", len(gguf_tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", gguf_tokenizer,
                      extra=lambda w: w.add_tensor("rope_freqs.weight", np.ones(HEAD_DIM, np.float32)))
    with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'rope_freqs\.weight'.*shape \[16\], expected \[8\]"):
        load_model(path)
