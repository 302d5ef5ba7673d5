"""LLaMA-family checkpoints in use now: Llama-3.1/3.2 RoPE scaling (llama3, linear), Qwen3 (q/k norm,
explicit head_dim), Mistral / Qwen2 sliding windows. Each loads from a tiny random transformers model
saved with save_pretrained and gives transformers' logits (fp32, 1e-4) on inputs longer than the
pretraining context / the window; the published presets have the published sizes; what graphopt does
not implement is a CheckpointError naming config.json and the thing it found."""
import json
import shutil
from collections import Counter
from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import graphopt  # noqa: E402
from graphopt.checkpoints import CheckpointError, load_meta_checkpoint, load_model, save_meta_checkpoint  # noqa: E402
from graphopt.checkpoints.hf import SUPPORTED_MODEL_TYPES  # noqa: E402
from graphopt.model import PRESETS, ModelArgs, Transformer, init_random_weights  # noqa: E402
from graphopt.model.args import RopeScaling  # noqa: E402
from graphopt.model.llama import rope_tables, scale_inv_freq  # noqa: E402
from graphopt.scoring.batch import ScoreModule  # noqa: E402
from tests.test_capture import score_inputs  # noqa: E402
from tests.test_checkpoints import _randomize  # noqa: E402

V, D, T = 96, 64, 40  # T: longer than the tiny original context (16) and the window (8)
IDS = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
TOL = 1e-4
COMMON = dict(hidden_size=D, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=V, max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5)


def _save(hf_cls, cfg, path, seed):
    cfg._attn_implementation = "eager"  # the sliding window is applied as a mask (as graphopt does)
    hf = _randomize(hf_cls(cfg), seed)
    hf.save_pretrained(path)
    with torch.no_grad():
        return hf, hf(input_ids=IDS).logits


def _load(path):
    return load_model(str(path), tokenizer="word-hash")[0]  # logits only: no tokenizer file is written


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def _edit_config(src, dst, **changes):
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


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """{kind: (hf logits, directory)} for tiny LlamaForCausalLMs with llama3 / linear RoPE scaling."""
    out = {}
    for kind, params in (("llama3", LLAMA3), ("linear", LINEAR)):
        d = tmp_path_factory.mktemp(kind)
        cfg = transformers.LlamaConfig(**COMMON, rope_parameters=dict(params))
        out[kind] = _save(transformers.LlamaForCausalLM, cfg, d, seed=5)[1], d
    return out


@pytest.mark.parametrize("kind", ["llama3", "linear"])
@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_rope_scaling_gives_transformers_logits(scaled, tmp_path, kind, layout):
    want, d = scaled[kind]
    params = dict(LLAMA3 if kind == "llama3" else LINEAR)
    if layout == "v4":  # transformers 4's config.json: rope_theta at the top, rope_scaling with "type"
        theta, kind_key = params.pop("rope_theta"), params.pop("rope_type")
        d = _edit_config(d, tmp_path / "v4", rope_parameters=None, rope_theta=theta,
                         rope_scaling={"type": kind_key, **params})
    model = _load(d)
    s = model.args.rope_scaling
    assert s is not None and s.kind == kind
    if kind == "llama3":
        assert (s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_seq_len) == (4.0, 0.5, 2.0, 16)
    diff = _max_diff(_logits(model), want)
    assert diff <= TOL, f"{kind} ({layout} config): max |logit diff| {diff}"
    plain = Transformer(replace(model.args, rope_scaling=None))  # the scaling matters on these inputs
    plain.load_state_dict(model.state_dict())
    assert _max_diff(_logits(plain.eval()), want) > 1e-2


def test_llama3_without_original_context_uses_max_position_embeddings(scaled, tmp_path):
    _, d = scaled["llama3"]
    params = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    model = _load(_edit_config(d, tmp_path / "d", rope_parameters=params))
    assert model.args.rope_scaling.original_max_seq_len == 64  # as transformers' standardize_rope_params


@pytest.mark.parametrize("params, match", [
    ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "RoPE scaling 'yarn' is not supported.*linear, llama3"),
    ({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}, "RoPE scaling 'dynamic' is not supported"),
    ({"rope_type": "longrope", "rope_theta": 1e4}, "RoPE scaling 'longrope' is not supported"),
    ({"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}, "RoPE scaling 'llama3' needs a number 'low_freq_factor'"),
    ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ({"full_attention": {"rope_type": "default"}}, "rope_parameters per layer type"),
])
def test_unsupported_rope_is_a_clear_error(scaled, tmp_path, params, match):
    _, d = scaled["linear"]
    d = _edit_config(d, tmp_path / "d", rope_parameters=params)
    with pytest.raises(CheckpointError, match=rf"{d}/config\.json: {match}"):
        load_model(str(d), tokenizer="word-hash")


def test_rope_scaling_rebuilt_on_meta_save_and_load(scaled, tmp_path):
    _, d = scaled["llama3"]
    model = _load(d)
    save_meta_checkpoint(model, tmp_path, n_shards=2)
    assert json.loads((tmp_path / "params.json").read_text())["rope_scaling"]["kind"] == "llama3"
    back = load_meta_checkpoint(tmp_path)
    assert back.args == model.args
    torch.testing.assert_close(back.rope_cos, model.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)


# ---------------------------------------------------------------- Qwen3 and explicit head_dim

@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen3")
    cfg = transformers.Qwen3Config(**{**COMMON, "rms_norm_eps": 1e-6}, head_dim=24, rope_theta=1e6,
                                   attention_bias=False)
    hf, want = _save(transformers.Qwen3ForCausalLM, cfg, d, seed=6)
    return hf, want, d


def test_qwen3_gives_transformers_logits(qwen3):
    hf, want, d = qwen3
    model = _load(d)
    a = model.args
    assert a.qk_norm and a.head_dim == 24 and not a.qkv_bias and a.rope_theta == 1e6
    at, hf_at = model.layers[0].attention, hf.model.layers[0].self_attn
    assert at.wq.weight.shape == (4 * 24, D) and at.wo.weight.shape == (D, 4 * 24)
    # the norm weights got one head's rotate_half permutation: same values, Meta's pair order
    perm = torch.arange(24).view(2, 12).t().flatten()  # Meta dim 2i+j <- HF dim j*12+i
    assert torch.equal(at.q_norm.weight, hf_at.q_norm.weight[perm])
    assert torch.equal(at.k_norm.weight, hf_at.k_norm.weight[perm])
    assert not torch.equal(at.q_norm.weight, hf_at.q_norm.weight)
    diff = _max_diff(_logits(model), want)
    assert diff <= TOL, f"qwen3: max |logit diff| {diff}"


def test_qwen3_norm_weights_unpermuted_matter(qwen3):
    """The same weights with the q/k norms left in HF's order give other logits (the test can fail)."""
    hf, want, d = qwen3
    model = _load(d)
    with torch.no_grad():
        for layer, hf_layer in zip(model.layers, hf.model.layers):
            layer.attention.q_norm.weight.copy_(hf_layer.self_attn.q_norm.weight)
            layer.attention.k_norm.weight.copy_(hf_layer.self_attn.k_norm.weight)
    assert _max_diff(_logits(model), want) > 1e-2


def test_qwen3_tied_and_meta_round_trip(tmp_path):
    cfg = transformers.Qwen3Config(**{**COMMON, "tie_word_embeddings": True}, head_dim=16, rope_theta=1e6)
    _, want = _save(transformers.Qwen3ForCausalLM, cfg, tmp_path / "hf", seed=7)
    model = _load(tmp_path / "hf")
    assert model.args.tie_embeddings and model.output.weight is model.tok_embeddings.weight
    assert _max_diff(_logits(model), want) <= TOL
    save_meta_checkpoint(model, tmp_path / "meta", n_shards=2)
    back = load_meta_checkpoint(tmp_path / "meta")
    assert back.args == model.args and back.args.qk_norm
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)


def test_llama_with_head_dim_not_dim_over_heads(tmp_path):
    cfg = transformers.LlamaConfig(**COMMON, head_dim=24, rope_theta=10000.0)
    _, want = _save(transformers.LlamaForCausalLM, cfg, tmp_path, seed=8)
    model = _load(tmp_path)
    assert model.args.head_dim == 24 and not model.args.qk_norm
    diff = _max_diff(_logits(model), want)
    assert diff <= TOL, f"llama head_dim 24: max |logit diff| {diff}"


def _qwen3_score_module():
    """tiny-qwen3 with random q/k norm weights (init_random_weights sets norms to 1)."""
    model = init_random_weights(Transformer(ModelArgs.from_name("tiny-qwen3")), seed=4).eval()
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return ScoreModule(model)


@pytest.mark.parametrize("pipeline", ["exact", "exact-cpu"])
@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-window"])
def test_optimized_matches_eager(preset, pipeline):
    """The named pipelines rewrite these models as fully as tiny-gqa (every pass matches; fuse_rmsnorm
    finds the q/k norms too) and keep the eager log-probs, on rows longer than the window (T = 11 > 8)."""
    torch._dynamo.reset()
    if preset == "tiny-qwen3":
        module = _qwen3_score_module()
    else:
        module = ScoreModule(init_random_weights(Transformer(ModelArgs.from_name(preset)), seed=4).eval())
    opt = graphopt.optimize(module, score_inputs(2, 8, 5, seed=2), pipeline)
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 11, 7)]:
            y = score_inputs(*shape, seed=sum(shape))
            diff = _max_diff(opt(*y), module(*y))
            assert diff <= TOL, f"{preset} {pipeline}: optimized vs eager differ by {diff} at {shape}"
    matches = {r.name: r.matches for r in opt.records}
    assert all(n > 0 for name, n in matches.items() if name not in ("cse", "dce")), matches
    # per layer: attention_norm, ffn_norm (and q_norm, k_norm); and the final norm
    n_norms = 2 * (4 if preset == "tiny-qwen3" else 2) + 1
    assert matches["fuse_rmsnorm"] == n_norms and matches["fuse_rope"] == 4, matches
    targets = [n.target for n in opt.graph.graph.nodes]
    assert targets.count(torch.ops.graphopt.rms_norm.default) == n_norms


def test_qwen3_fast_pipeline_keeps_attention_inputs_in_one_dtype():
    """cast_dtype (pipeline fast) keeps norm weights float32: the q/k norms return q's / k's dtype, so
    SDPA gets bfloat16 q, k and v (a float32 q/k failed with 'same dtype' before) and log-probs stay
    close to float32's."""
    torch._dynamo.reset()
    module = _qwen3_score_module()
    x = score_inputs(3, 11, 7, seed=5)
    opt = graphopt.optimize(module, x, "fast")
    sdpa = [n for n in opt.graph.graph.nodes if n.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert len(sdpa) == 2 and all(a.meta["val"].dtype == torch.bfloat16 for n in sdpa for a in n.args[:3])
    with torch.no_grad():
        diff = _max_diff(opt(*x), module(*x))
    assert 0 < diff < 0.1, f"fast (bfloat16) vs float32 log-probs: {diff}"


# ---------------------------------------------------------------- sliding windows

@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistral")
    cfg = transformers.MistralConfig(**COMMON, sliding_window=8)
    return _save(transformers.MistralForCausalLM, cfg, d, seed=10)[1], d


def test_mistral_sliding_window_gives_transformers_logits(mistral):
    want, d = mistral
    model = _load(d)
    assert (model.args.sliding_window, model.args.window_from_layer, model.args.max_seq_len) == (8, 0, 64)
    diff = _max_diff(_logits(model), want)
    assert diff <= TOL, f"mistral window 8: max |logit diff| {diff}"
    for other in (None, 7, 9):  # no window and both off-by-ones give other logits
        model.args = replace(model.args, sliding_window=other)
        assert _max_diff(_logits(model), want) > 1e-3, other


def test_window_follows_positions_not_row_offsets():
    """A shared-prefix row [context | ending 1 | ending 2] (both endings at positions C.., each attending
    the context and itself): ending 2's logits equal those of [context | ending 2] alone, so the window
    is measured in positions, not in row offsets (ending 2 sits 6 slots further from the context)."""
    model = init_random_weights(Transformer(ModelArgs.from_name("tiny-window")), seed=1).eval()
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
    alone = _logits(model, torch.cat([ctx, e2], 1))
    torch.testing.assert_close(packed[:, 16:], alone[:, 10:], atol=1e-5, rtol=0)
    assert _max_diff(alone, _logits(_with_args(model, None), torch.cat([ctx, e2], 1))) > 1e-3  # the window acts


def _with_args(model, window):
    m = Transformer(replace(model.args, sliding_window=window)).eval()
    m.load_state_dict(model.state_dict())
    return m


@pytest.mark.parametrize("max_window_layers", [0, 1])
def test_qwen2_sliding_window_layers(tmp_path, max_window_layers):
    """use_sliding_window with max_window_layers: layers from there on use the window (transformers'
    layer_types), the others attend fully."""
    cfg = transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8,
                                   max_window_layers=max_window_layers, rope_theta=1e6)
    assert cfg.layer_types == ["full_attention"] * max_window_layers + ["sliding_attention"] * (2 - max_window_layers)
    _, want = _save(transformers.Qwen2ForCausalLM, cfg, tmp_path, seed=11)
    model = _load(tmp_path)
    assert (model.args.sliding_window, model.args.window_from_layer) == (8, max_window_layers)
    diff = _max_diff(_logits(model), want)
    assert diff <= TOL, f"qwen2 window from layer {max_window_layers}: max |logit diff| {diff}"
    other = _with_args(model, 8)
    other.args = replace(other.args, window_from_layer=1 - max_window_layers)
    assert _max_diff(_logits(other), want) > 1e-3


def test_qwen2_without_use_sliding_window_has_no_window(tmp_path):
    cfg = transformers.Qwen2Config(**COMMON, use_sliding_window=False, sliding_window=8, max_window_layers=0)
    _, want = _save(transformers.Qwen2ForCausalLM, cfg, tmp_path, seed=12)
    model = _load(tmp_path)
    assert model.args.sliding_window is None
    assert _max_diff(_logits(model), want) <= TOL


def test_layer_types_graphopt_cannot_express(mistral, tmp_path):
    _, d = mistral
    cfg = json.loads((d / "config.json").read_text())
    d = _edit_config(d, tmp_path / "d", model_type="qwen2", use_sliding_window=True, max_window_layers=0,
                     layer_types=["sliding_attention", "full_attention"], architectures=["Qwen2ForCausalLM"])
    assert cfg["num_hidden_layers"] == 2
    with pytest.raises(CheckpointError, match=r"config\.json: layer_types .* full_attention layers first"):
        load_model(str(d), tokenizer="word-hash")


def test_window_model_meta_round_trip(mistral, tmp_path):
    _, d = mistral
    model = _load(d)
    save_meta_checkpoint(model, tmp_path)
    back = load_meta_checkpoint(tmp_path)
    assert back.args == model.args and back.args.sliding_window == 8
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)


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
def test_other_families_are_refused(mistral, tmp_path, model_type):
    _, d = mistral
    d = _edit_config(d, tmp_path / "d", model_type=model_type)
    with pytest.raises(CheckpointError, match=rf"config\.json: model_type '{model_type}' is not supported.*"
                                              rf"{', '.join(SUPPORTED_MODEL_TYPES)}"):
        load_model(str(d), tokenizer="word-hash")


def test_qwen3_attention_bias_is_refused(qwen3, tmp_path):
    _, _, d = qwen3
    d = _edit_config(d, tmp_path / "d", attention_bias=True)
    with pytest.raises(CheckpointError, match=r"config\.json: attention_bias=true"):
        load_model(str(d), tokenizer="word-hash")


# ---------------------------------------------------------------- passes that change head counts

@pytest.mark.distributed
def test_tensor_parallel_keeps_qk_norms_whole_and_the_window():
    """tensor_parallel cuts heads; a q/k norm acts per head over head_dim, so every rank keeps all of it
    (it is not a linear the plan cuts), and the window mask is computed from the positions on every rank."""
    from graphopt.distributed.launch import launch
    from tests import _dist_workers as W
    from tests.test_distributed_tp import _check
    res = launch(W.tp_worker, 2, args=([("tiny-qwen3", {}, ()), ("tiny-window", {"vocab_parallel": True}, ())],),
                 timeout_s=240)
    _check(res, 2)


def test_prune_heads_keeps_qk_norms():
    """prune_structured drops kv groups (rows of wq/wk/wv, columns of wo); the q/k norms, over head_dim,
    stay as they are: the pruned graph equals the eager model with the dropped groups' wo columns zeroed."""
    from graphopt.graph_capture import capture
    from graphopt.pipeline import PassContext, run_passes
    module = _qwen3_score_module()
    args = module.model.args
    x = score_inputs(2, 8, 5, seed=2)
    gm = capture(module, x)
    gm, records = run_passes(gm, [{"name": "prune_structured", "ratio": 0.5, "what": "heads"}],
                             PassContext(example_inputs=x, model_args=args))
    assert records[0].stats["kv_groups_removed"] == args.n_layers  # one of 2 groups per layer
    ref = module.model
    hd, q_rows = args.head_dim, args.n_heads // args.n_kv_heads * args.head_dim
    with torch.no_grad():
        for i, layer in enumerate(ref.layers):
            kept_k = dict(gm.named_parameters())[f"model.layers.{i}.attention.wk.weight"]
            at = layer.attention
            assert at.q_norm.weight.shape == (hd,)
            kept = [g for g in range(args.n_kv_heads) if torch.equal(kept_k, at.wk.weight[g * hd:(g + 1) * hd])]
            assert len(kept) == 1
            for g in range(args.n_kv_heads):
                if g not in kept:
                    at.wo.weight[:, g * q_rows:(g + 1) * q_rows] = 0
        diff = _max_diff(gm(*x), module(*x))
    assert diff <= TOL, f"pruned qwen3 graph vs eager with zeroed groups: {diff}"


@pytest.mark.parametrize("which", ["qwen3", "llama3"])
def test_load_shard_fills_qk_norms_and_scaled_rope(qwen3, scaled, which):
    """graphopt.distributed.load_shard (lazy safetensors slices, one rank here) un-permutes the q/k norms
    and rebuilds the RoPE tables with the scaling: the filled graph gives load_model's log-probs."""
    from graphopt.checkpoints import read_hf_config
    from graphopt.distributed.load_shard import load_shard
    from graphopt.graph_capture import capture
    d = qwen3[2] if which == "qwen3" else scaled["llama3"][1]
    args = read_hf_config(d)
    x = score_inputs(2, 8, 5, vocab=V, seed=3)
    gm = capture(ScoreModule(init_random_weights(Transformer(args), seed=1).eval()), x).to("meta")
    # weightless, as a sharded worker's graph: load_shard fills what is on the meta device
    stats = load_shard(gm, d, 0, 1, args)
    assert stats["files_opened"] == ["model.safetensors"]
    with torch.no_grad():
        diff = _max_diff(gm(*x), ScoreModule(_load(d))(*x))
    assert diff <= 1e-5, f"{which}: load_shard graph vs load_model differ by {diff}"


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-window"])
def test_pipeline_split_carries_window_mask_and_qk_norms(preset):
    """pipeline_split at layer boundaries: the window mask (computed once, before layer 0) reaches the
    later stages, the q/k norms go with their layers; rows of 12 > window 8."""
    from graphopt.distributed.pipeline_run import run_pipeline
    from graphopt.pipeline import PassContext, run_passes
    from tests import _dist_workers as W
    args, sm = W.build_score_module(preset, n_layers=4)
    inputs = W.example_batch(args, B=4, T=12)
    gm = W.capture_graph(sm, inputs)
    with torch.no_grad():
        ref = sm(*inputs)
        split, recs = run_passes(gm, [("pipeline_split", {"n_stages": 2})], PassContext(model_args=args))
        assert recs[0].matches == 2
        assert _max_diff(split(*inputs), ref) <= 1e-5
        assert _max_diff(run_pipeline(split, inputs, n_micro=2, devices=["cpu"] * 2), ref) <= 1e-5
