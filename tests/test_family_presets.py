"""The family presets have the published sizes and features and survive JSON; the families graphopt does
not implement (and Qwen3 with attention bias) are a CheckpointError naming config.json."""
import json

import pytest
import torch

from graphopt.checkpoints import CheckpointError, load_model
from graphopt.checkpoints.hf import SUPPORTED_MODEL_TYPES
from graphopt.model import PRESETS, ModelArgs, Transformer
from graphopt.model.args import RopeScaling
from tests._family_models import edit_config


# ---------------------------------------------------------------- presets

PUBLISHED = {"llama-3.1-8b": 8.03e9, "llama-3.2-1b": 1.236e9, "llama-3.2-3b": 3.21e9, "qwen2.5-7b": 7.62e9,
             "qwen3-8b": 8.19e9, "mistral-7b": 7.24e9}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_count_is_published_size(name):
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_name(name))
    n = sum(p.numel() for p in model.parameters())  # a tied table counts once
    assert abs(n / PUBLISHED[name] - 1) < 0.01, f"{name}: {n / 1e9:.3f}B parameters, published {PUBLISHED[name] / 1e9}B"


def test_preset_family_features():
    p = {k: ModelArgs.from_name(k) for k in PUBLISHED}
    assert p["llama-3.1-8b"].rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert p["llama-3.2-1b"].rope_scaling.factor == 32.0 and p["llama-3.2-1b"].tie_embeddings
    assert p["llama-3.2-3b"].tie_embeddings and p["llama-3.2-3b"].head_dim == 128
    assert p["qwen2.5-7b"].qkv_bias and not p["qwen2.5-7b"].qk_norm
    assert p["qwen3-8b"].qk_norm and p["qwen3-8b"].head_dim == 128 and not p["qwen3-8b"].qkv_bias
    assert p["mistral-7b"].sliding_window == 4096


@pytest.mark.parametrize("name", list(PRESETS))
def test_model_args_json_round_trip(name):
    a = ModelArgs.from_name(name)
    d = json.loads(json.dumps(a.to_dict()))
    assert ModelArgs(**d) == a


# ---------------------------------------------------------------- refused families

@pytest.mark.parametrize("model_type", ["gemma", "phi3", "gemma2", "mixtral"])
def test_other_families_are_refused(hf_mistral, tmp_path, model_type):
    _, d = hf_mistral
    d = edit_config(d, tmp_path / "d", model_type=model_type)
    with pytest.raises(CheckpointError, match=rf"config\.json: model_type '{model_type}' is not supported.*"
                                              rf"{', '.join(SUPPORTED_MODEL_TYPES)}"):
        load_model(str(d), tokenizer="word-hash")


def test_qwen3_attention_bias_is_refused(hf_qwen3, tmp_path):
    _, _, d = hf_qwen3
    d = edit_config(d, tmp_path / "d", attention_bias=True)
    with pytest.raises(CheckpointError, match=r"config\.json: attention_bias=true"):
        load_model(str(d), tokenizer="word-hash")
