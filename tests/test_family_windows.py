"""Mistral / Qwen2 sliding windows: transformers' logits (fp32, 1e-4) past the window, the window in
positions (not row offsets) for packed rows, Qwen2's max_window_layers, layer types graphopt cannot
express refused, a Meta round trip, models without a window unchanged; and the max_seq_len check."""
import json
from collections import Counter
from dataclasses import replace

import pytest
import torch

from graphopt.checkpoints import CheckpointError, load_meta_checkpoint, load_model, save_meta_checkpoint
from graphopt.model import ModelArgs, Transformer
from tests._builders import random_model
from tests._family_models import COMMON, TOL, edit_config, load_dir, logits_of, max_diff, save_hf_model, transformers, with_window


def test_mistral_sliding_window_gives_transformers_logits(hf_mistral):
    want, d = hf_mistral
    model = load_dir(d)
    assert (model.args.sliding_window, model.args.window_from_layer, model.args.max_seq_len) == (8, 0, 64)
    diff = max_diff(logits_of(model), want)
    assert diff <= TOL, f"mistral window 8: max |logit diff| {diff}"
    for other in (None, 7, 9):  # no window and both off-by-ones give other logits
        model.args = replace(model.args, sliding_window=other)
        assert max_diff(logits_of(model), want) > 1e-3, other


def test_window_follows_positions_not_row_offsets():
    """A shared-prefix row [context | ending 1 | ending 2] (both endings at positions C.., each attending
    the context and itself): ending 2's logits equal those of [context | ending 2] alone, so the window
    is measured in positions, not in row offsets (ending 2 sits 6 slots further from the context)."""
    model = random_model("tiny-window", seed=1)
    g = torch.Generator().manual_seed(3)
    ctx, e1, e2 = (torch.randint(0, 512, (1, n), generator=g) for n in (10, 6, 6))
    pos = torch.cat([torch.arange(10), torch.arange(10, 16), torch.arange(10, 16)])[None]
    mask = torch.zeros(22, 22, dtype=torch.bool)
    mask[:, :10] = True  # every token sees the context ...
    for lo, hi in ((0, 10), (10, 16), (16, 22)):
        mask[lo:hi, lo:hi] = torch.ones(hi - lo, hi - lo, dtype=torch.bool)
    mask &= torch.ones(22, 22, dtype=torch.bool).tril()  # ... and its own segment, causally
    with torch.no_grad():
        packed = model(torch.cat([ctx, e1, e2], 1), pos, mask[None])
    alone = logits_of(model, torch.cat([ctx, e2], 1))
    torch.testing.assert_close(packed[:, 16:], alone[:, 10:], atol=1e-5, rtol=0)
    assert max_diff(alone, logits_of(with_window(model, None), torch.cat([ctx, e2], 1))) > 1e-3  # the window acts


@pytest.mark.parametrize("max_window_layers", [0, 1])
def test_qwen2_sliding_window_layers(tmp_path, max_window_layers):
    """use_sliding_window with max_window_layers: layers from there on use the window (transformers'
    layer_types), the others attend fully."""
    cfg = transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8,
                                   max_window_layers=max_window_layers, rope_theta=1e6)
    assert cfg.layer_types == ["full_attention"] * max_window_layers + ["sliding_attention"] * (2 - max_window_layers)
    _, want = save_hf_model(transformers.Qwen2ForCausalLM, cfg, tmp_path, seed=11)
    model = load_dir(tmp_path)
    assert (model.args.sliding_window, model.args.window_from_layer) == (8, max_window_layers)
    diff = max_diff(logits_of(model), want)
    assert diff <= TOL, f"qwen2 window from layer {max_window_layers}: max |logit diff| {diff}"
    other = with_window(model, 8)
    other.args = replace(other.args, window_from_layer=1 - max_window_layers)
    assert max_diff(logits_of(other), want) > 1e-3


def test_qwen2_without_use_sliding_window_has_no_window(tmp_path):
    cfg = transformers.Qwen2Config(**COMMON, use_sliding_window=False, sliding_window=8, max_window_layers=0)
    _, want = save_hf_model(transformers.Qwen2ForCausalLM, cfg, tmp_path, seed=12)
    model = load_dir(tmp_path)
    assert model.args.sliding_window is None
    assert max_diff(logits_of(model), want) <= TOL


def test_layer_types_graphopt_cannot_express(hf_mistral, tmp_path):
    _, d = hf_mistral
    cfg = json.loads((d / "config.json").read_text())
    d = edit_config(d, tmp_path / "d", model_type="qwen2", use_sliding_window=True, max_window_layers=0,
                     layer_types=["sliding_attention", "full_attention"], architectures=["Qwen2ForCausalLM"])
    assert cfg["num_hidden_layers"] == 2
    with pytest.raises(CheckpointError, match=r"config\.json: layer_types .* full_attention layers first"):
        load_model(str(d), tokenizer="word-hash")


def test_window_model_meta_round_trip(hf_mistral, tmp_path):
    _, d = hf_mistral
    model = load_dir(d)
    save_meta_checkpoint(model, tmp_path)
    back = load_meta_checkpoint(tmp_path)
    assert back.args == model.args and back.args.sliding_window == 8
    torch.testing.assert_close(logits_of(back), logits_of(model), atol=0, rtol=0)


def test_models_without_a_window_build_the_same_graph():
    """The window is a Python-level switch: it adds one (pos_q - pos_k < W) & mask, computed once for all
    layers; a model without a window exports none of it."""
    def n_ops(name):
        m = Transformer(ModelArgs.from_name(name)).eval()
        gm = torch.export.export(m, (torch.randint(0, 512, (2, 8)),), strict=False).module()
        return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    plain, window = n_ops("tiny-gqa"), n_ops("tiny-window")
    assert window - plain == Counter({"aten.unsqueeze.default": 2, "aten.sub.Tensor": 1, "aten.lt.Scalar": 1,
                                      "aten.__and__.Tensor": 1}) and not plain - window


# ---------------------------------------------------------------- length limit

def test_input_longer_than_max_seq_len_is_a_clear_error():
    model, _ = load_model("tiny", max_seq_len=16)
    with pytest.raises(ValueError, match=r"input of 17 tokens is longer than the model's max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 512)
    # packed rows: longer than max_seq_len, positions within it (positions are not checked here)
    pos = torch.cat([torch.arange(12), torch.arange(8)])[None]
    mask = torch.ones(20, 20, dtype=torch.bool).tril()[None]
    assert model(torch.zeros(1, 20, dtype=torch.long), pos, mask).shape == (1, 20, 512)
