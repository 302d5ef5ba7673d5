"""Llama-3.1/3.2 RoPE scaling (llama3, linear) and GGUF's per-frequency factors: the tables match
transformers', a tiny scaled LlamaForCausalLM gives transformers' logits (fp32, 1e-4) from both config.json
layouts, scaling graphopt does not implement is a CheckpointError naming config.json, and the scaling
survives a Meta checkpoint round trip."""
import json
from dataclasses import replace

import pytest
import torch

from graphopt.checkpoints import CheckpointError, load_meta_checkpoint, load_model, save_meta_checkpoint
from graphopt.model import ModelArgs, Transformer
from graphopt.model.args import RopeScaling
from graphopt.model.llama import rope_tables, scale_inv_freq
from tests._family_models import COMMON, LINEAR, LLAMA3, TOL, V, edit_config, load_dir, logits_of, max_diff, transformers


def test_llama3_scaling_has_all_three_bands():
    """head_dim 16, theta 1e4, original context 16, low/high 0.5/2: wavelength 6.3 (< 8) is kept, 20
    (between 8 and 32) interpolated, longer ones divided by the factor, as transformers computes."""
    inv = 1.0 / (1e4 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    s = RopeScaling("llama3", 4.0, 0.5, 2.0, 16)
    ratio = scale_inv_freq(inv, s) / inv
    assert ratio[0] == 1.0 and 0.25 < ratio[1] < 1.0 and torch.allclose(ratio[2:], torch.full((6,), 0.25, dtype=torch.float64))
    cfg = transformers.LlamaConfig(**COMMON, rope_parameters=dict(LLAMA3))
    hf_inv, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    torch.testing.assert_close(scale_inv_freq(inv, s).float(), hf_inv, atol=1e-7, rtol=1e-6)
    cos, sin = rope_tables(16, 64, 1e4, s)
    assert cos.dtype == torch.float32 and cos.shape == (64, 8)
    assert (cos - rope_tables(16, 64, 1e4)[0]).abs().max() > 0.1


def test_freq_factors_scaling_is_a_per_frequency_divisor():
    """RopeScaling("freq_factors") (GGUF's rope_freqs): inv_freq / factors[i]; the llama3 divisors give the
    llama3 tables; the factors survive JSON (a list) and must be head_dim // 2 finite numbers > 0."""
    inv = 1.0 / (1e4 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    llama3 = RopeScaling("llama3", 4.0, 0.5, 2.0, 16)
    s = RopeScaling("freq_factors", factors=(inv / scale_inv_freq(inv, llama3)).tolist())
    assert isinstance(s.factors, tuple) and s.factor == 1.0
    torch.testing.assert_close(scale_inv_freq(inv, s), scale_inv_freq(inv, llama3), atol=0, rtol=1e-15)
    torch.testing.assert_close(rope_tables(16, 64, 1e4, s)[0], rope_tables(16, 64, 1e4, llama3)[0], atol=1e-6, rtol=0)
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=V, rope_scaling=s)
    assert ModelArgs(**json.loads(json.dumps(args.to_dict()))) == args
    assert ModelArgs(**json.loads(json.dumps(replace(args, rope_scaling=llama3).to_dict()))).rope_scaling == llama3
    with pytest.raises(AssertionError, match="7 RoPE frequency factors for head_dim 16"):
        ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=V, rope_scaling=RopeScaling("freq_factors", factors=[1.0] * 7))
    for bad in ([], [1.0, 0.0], [float("nan")]):
        with pytest.raises(AssertionError, match="freq_factors"):
            RopeScaling("freq_factors", factors=bad)
    with pytest.raises(AssertionError, match="takes no per-frequency factors"):
        RopeScaling("linear", 2.0, factors=(1.0,))


@pytest.mark.parametrize("kind", ["llama3", "linear"])
@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_rope_scaling_gives_transformers_logits(hf_rope_scaled, tmp_path, kind, layout):
    want, d = hf_rope_scaled[kind]
    params = dict(LLAMA3 if kind == "llama3" else LINEAR)
    if layout == "v4":  # transformers 4's config.json: rope_theta at the top, rope_scaling with "type"
        theta, kind_key = params.pop("rope_theta"), params.pop("rope_type")
        d = edit_config(d, tmp_path / "v4", rope_parameters=None, rope_theta=theta,
                         rope_scaling={"type": kind_key, **params})
    model = load_dir(d)
    s = model.args.rope_scaling
    assert s is not None and s.kind == kind
    if kind == "llama3":
        assert (s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_seq_len) == (4.0, 0.5, 2.0, 16)
    diff = max_diff(logits_of(model), want)
    assert diff <= TOL, f"{kind} ({layout} config): max |logit diff| {diff}"
    plain = Transformer(replace(model.args, rope_scaling=None))  # the scaling matters on these inputs
    plain.load_state_dict(model.state_dict())
    assert max_diff(logits_of(plain.eval()), want) > 1e-2


def test_llama3_without_original_context_uses_max_position_embeddings(hf_rope_scaled, tmp_path):
    _, d = hf_rope_scaled["llama3"]
    params = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    model = load_dir(edit_config(d, tmp_path / "d", rope_parameters=params))
    assert model.args.rope_scaling.original_max_seq_len == 64  # as transformers' standardize_rope_params


@pytest.mark.parametrize("params, match", [
    ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "RoPE scaling 'yarn' is not supported.*linear, llama3"),
    ({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}, "RoPE scaling 'dynamic' is not supported"),
    ({"rope_type": "longrope", "rope_theta": 1e4}, "RoPE scaling 'longrope' is not supported"),
    ({"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}, "RoPE scaling 'llama3' needs a number 'low_freq_factor'"),
    ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ({"full_attention": {"rope_type": "default"}}, "rope_parameters per layer type"),
])
def test_unsupported_rope_is_a_clear_error(hf_rope_scaled, tmp_path, params, match):
    _, d = hf_rope_scaled["linear"]
    d = edit_config(d, tmp_path / "d", rope_parameters=params)
    with pytest.raises(CheckpointError, match=rf"{d}/config\.json: {match}"):
        load_model(str(d), tokenizer="word-hash")


def test_rope_scaling_rebuilt_on_meta_save_and_load(hf_rope_scaled, tmp_path):
    _, d = hf_rope_scaled["llama3"]
    model = load_dir(d)
    save_meta_checkpoint(model, tmp_path, n_shards=2)
    assert json.loads((tmp_path / "params.json").read_text())["rope_scaling"]["kind"] == "llama3"
    back = load_meta_checkpoint(tmp_path)
    assert back.args == model.args
    torch.testing.assert_close(back.rope_cos, model.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(logits_of(back), logits_of(model), atol=0, rtol=0)
