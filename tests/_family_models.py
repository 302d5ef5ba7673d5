"""Tiny LLaMA-family checkpoints shared by the family tests (tests/test_family_*.py): transformers models
of each family with random weights, saved with save_pretrained, their logits on IDS (longer than the
tiny original context, 16, and the window, 8). The saved directories are session fixtures in
tests/conftest.py (hf_rope_scaled, hf_qwen3, hf_mistral)."""
import json
import shutil
from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from graphopt.checkpoints import load_model  # noqa: E402
from graphopt.model import Transformer  # noqa: E402
from graphopt.scoring.batch import ScoreModule  # noqa: E402
from tests._builders import random_model, randomize_hf  # noqa: E402

V, D, T = 96, 64, 40  # T: longer than the tiny original context (16) and the window (8)
IDS = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
TOL = 1e-4
COMMON = dict(hidden_size=D, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=V, max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5)


def save_hf_model(hf_cls, cfg, path, seed):
    cfg._attn_implementation = "eager"  # the sliding window is applied as a mask (as graphopt does)
    hf = randomize_hf(hf_cls(cfg), seed)
    hf.save_pretrained(path)
    with torch.no_grad():
        return hf, hf(input_ids=IDS).logits


def load_dir(path):
    return load_model(str(path), tokenizer="word-hash")[0]  # logits only: no tokenizer file is written


def logits_of(model, ids=IDS):
    with torch.no_grad():
        return model(ids)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ---------------------------------------------------------------- RoPE scaling


LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 0.5,
          "high_freq_factor": 2.0, "original_max_position_embeddings": 16}
LINEAR = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5}


def qwen3_score_module():
    """tiny-qwen3 with random q/k norm weights (init_random_weights sets norms to 1)."""
    model = random_model("tiny-qwen3", seed=4)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return ScoreModule(model)


def with_window(model, window):
    m = Transformer(replace(model.args, sliding_window=window)).eval()
    m.load_state_dict(model.state_dict())
    return m
