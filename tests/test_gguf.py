"""GGUF loading: tiny transformers models written as llama.cpp's converter writes them (F32 and Q8_0,
permuted q/k for "llama", HF order for "qwen2"/"qwen3", a byte-level BPE vocabulary in the metadata) give
transformers' logits and tokens; bad files raise CheckpointError naming the file."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from graphopt.checkpoints import CheckpointError, load_model, load_model_structure  # noqa: E402

Q8 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32
TEXT = ["The cat sat on the mat, and the dog slept by the door.", "A man is cooking pasta in a kitchen.",
        "She paints the fence white before the rain comes.", "Kids play football in the park after school."]
SAMPLES = ["The dog sat by the kitchen door.", " leading space, then 3 digits 123!", "naïve café\nnew line"]
N_HEADS, N_KV, HEAD_DIM = 6, 2, 16  # GQA; dim 96: a Q8_0 block (32) divides every row
QWEN3_HEAD_DIM = 32  # Qwen3 sets head_dim apart from hidden_size / heads: the file says so in key_length


def _train_tokenizer():
    """A byte-level BPE (GPT-2 style, as Llama-3/SmolLM) -> (tokens, merges, token types, PreTrainedTokenizerFast)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    assert [model["vocab"][t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in ("<s>", "</s>") else 1 for t in tokens]  # 3: control
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    return tokens, merges, types, fast


def _randomize(model, seed):
    """Weights large enough that attention is peaked (a wrong q/k row order changes the logits a lot)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _hf_model(kind: str, vocab: int, tied: bool):
    common = dict(hidden_size=N_HEADS * HEAD_DIM, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=N_HEADS, num_key_value_heads=N_KV, vocab_size=vocab,
                  max_position_embeddings=64, tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=10000.0,
                  bos_token_id=0, eos_token_id=1)
    if kind == "llama":
        return _randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)), seed=1)
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(**common, head_dim=QWEN3_HEAD_DIM)
        return _randomize(transformers.Qwen3ForCausalLM(cfg), seed=3)
    return _randomize(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)), seed=2)


def _head_dim(hf) -> int:
    return getattr(hf.config, "head_dim", None) or hf.config.hidden_size // hf.config.num_attention_heads


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF's rotate_half rows -> Meta's interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def gguf_name(hf_key: str) -> str:
    stem, leaf = hf_key.rsplit(".", 1)
    if stem in _NAMES:
        return f"{_NAMES[stem]}.{leaf}"
    _, _, layer, rest = stem.split(".", 3)  # model.layers.N.rest
    return f"blk.{layer}.{_LAYER[rest]}.{leaf}"


def write_gguf(path, hf, kind: str, tokenizer, qtype=F32, permute: bool | None = None, arch: str | None = None,
               extra=None):
    """`hf` as llama.cpp's converter writes it: tensors renamed, q/k rows permuted for "llama"
    (not for "qwen2"/"qwen3"), 2-D tensors in `qtype`, norms and biases F32; a tied head is not written."""
    tokens, merges, types, _ = tokenizer
    cfg = hf.config
    permute = kind == "llama" if permute is None else permute
    w = gguf.GGUFWriter(str(path), arch or kind)
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(_head_dim(hf))
    if _head_dim(hf) != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(_head_dim(hf))
        w.add_value_length(_head_dim(hf))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == Q8 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)
    if extra is not None:
        extra(w)
    for key, t in hf.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if permute and (".q_proj." in key or ".k_proj." in key):
            a = llama_cpp_permute(a, N_HEADS if ".q_proj." in key else N_KV)
        if a.ndim == 2 and qtype != F32:
            w.add_tensor(gguf_name(key), gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(key), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return _train_tokenizer()


@pytest.fixture(scope="module")
def ids(tokenizer):
    fast = tokenizer[3]
    return torch.tensor([fast.encode(" ".join(TEXT[:2]), add_special_tokens=False)[:24]])


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=ids).logits


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", True)])
def test_f32_gguf_gives_transformers_logits(tmp_path, tokenizer, ids, kind, tied):
    hf = _hf_model(kind, len(tokenizer[0]), tied)
    path = write_gguf(tmp_path / "m.gguf", hf, kind, tokenizer)
    model, _ = load_model(path)
    assert model.args.tie_embeddings == tied and model.args.qkv_bias == (kind == "qwen2")
    assert model.args.qk_norm == (kind == "qwen3")
    assert (model.args.n_heads, model.args.n_kv_heads, model.args.head_dim) == (N_HEADS, N_KV, _head_dim(hf))
    if tied:
        assert model.output.weight is model.tok_embeddings.weight
    torch.testing.assert_close(_logits(model, ids), _hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_unpermuted_llama_gguf_is_detected_by_the_logits(tmp_path, tokenizer, ids):
    """The comparison above can fail: q/k written in HF's order under "llama" change the logits."""
    hf = _hf_model("llama", len(tokenizer[0]), False)
    model, _ = load_model(write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer, permute=False))
    assert (_logits(model, ids) - _hf_logits(hf, ids)).abs().max() > 1e-2


def _dequantized_copy(hf, qtype):
    """hf with every 2-D weight replaced by dequantize(quantize(w)): what the GGUF holds. Q8_0 blocks run
    along a row (32 input features), so llama.cpp's q/k row permutation does not change them."""
    import copy

    ref = copy.deepcopy(hf)
    with torch.no_grad():
        for _, p in ref.named_parameters():
            if p.dim() == 2:
                q = gguf.quants.quantize(p.numpy(), qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype)))
    return ref


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_q8_0_gguf_gives_the_dequantised_model_logits(tmp_path, tokenizer, ids, kind):
    hf = _hf_model(kind, len(tokenizer[0]), tied=kind == "llama")
    model, _ = load_model(write_gguf(tmp_path / "m.gguf", hf, kind, tokenizer, qtype=Q8))
    ours = _logits(model, ids)
    torch.testing.assert_close(ours, _hf_logits(_dequantized_copy(hf, Q8), ids), atol=1e-4, rtol=0)
    # and the file really was quantised: Q8_0 (|error| <= max|block| / 254, ~0.5% of a weight) moves the
    # logits, by a few % of their range here (the peaked attention of these random weights amplifies it)
    exact = _hf_logits(hf, ids)
    gap = (ours - exact).abs().max().item()
    assert 1e-3 < gap < 0.1 * exact.abs().max().item(), (gap, exact.abs().max().item())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gguf_loads_in_half_precision(tmp_path, tokenizer, dtype):
    """Dequantised to float32, then rounded once to the requested dtype: the float32 load, cast."""
    hf = _hf_model("llama", len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer, qtype=Q8)
    half, full = load_model(path, dtype=dtype)[0].state_dict(), load_model(path)[0].state_dict()
    assert half.keys() == full.keys()
    for key, t in half.items():
        assert t.dtype == getattr(torch, dtype) and torch.equal(t, full[key].to(t.dtype)), key


# not qwen3: transformers' GGUF reader ignores qwen3.attention.key_length (it builds head_dim 128)
@pytest.mark.parametrize("kind,qtype", [("llama", F32), ("llama", Q8), ("qwen2", F32)])
def test_transformers_reads_our_test_gguf_as_we_do(tmp_path, tokenizer, ids, kind, qtype):
    """transformers' own GGUF reader (which undoes llama.cpp's permutation itself) agrees: the test
    files follow llama.cpp's conventions, and so does the loader."""
    hf = _hf_model(kind, len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, kind, tokenizer, qtype=qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    model, tok = load_model(path)
    torch.testing.assert_close(_logits(model, ids), _hf_logits(theirs, ids), atol=1e-4, rtol=0)
    their_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for s in SAMPLES:
        assert tok.encode(s) == their_tok.encode(s, add_special_tokens=False)


def test_gguf_tokenizer_matches_the_original(tmp_path, tokenizer):
    tokens, _, _, fast = tokenizer
    hf = _hf_model("llama", len(tokens), True)
    _, tok = load_model(write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.add_bos_token) == (0, 1, len(tokens), False)
    for s in SAMPLES + TEXT:
        ids = tok.encode(s)
        assert ids == fast.encode(s, add_special_tokens=False) and ids[0] != tok.bos_id
        assert tok.decode(ids) == s
    assert tok.encode("<s>hi") == fast.encode("<s>hi", add_special_tokens=False)  # control token kept whole


def test_sentencepiece_vocabulary_matches_sentencepiece(tmp_path):
    """tokenizer.ggml.model "llama" (LLaMA-1/2, Mistral files): tokens + scores + types written as llama.cpp
    writes a tokenizer.model (normalisation identity, as LLaMA's); encodes as sentencepiece, byte fallback too."""
    import io

    import sentencepiece as spm

    from graphopt.checkpoints.gguf import open_gguf
    from graphopt.checkpoints.gguf_tokenizer import gguf_tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 20), model_writer=buf, vocab_size=360,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
                                   eos_id=2, normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    w = gguf.GGUFWriter(str(tmp_path / "sp.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(kinds)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = gguf_tokenizer(open_gguf(tmp_path / "sp.gguf"))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.add_bos_token) == (1, 2, n, True)  # llama.cpp's default
    for text in SAMPLES + ["Hello  World", "xyzzy quux 日本"]:  # unseen characters: byte fallback
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))


def test_load_model_structure_reads_no_tensors(tmp_path, tokenizer):
    hf = _hf_model("qwen2", len(tokenizer[0]), False)
    model, tok = load_model_structure(write_gguf(tmp_path / "m.gguf", hf, "qwen2", tokenizer), dtype="bfloat16")
    assert model.layers[0].attention.wq.weight.is_meta and model.layers[0].attention.wq.bias is not None
    assert model.tok_embeddings.weight.shape == (len(tokenizer[0]), N_HEADS * HEAD_DIM)
    assert model.tok_embeddings.weight.dtype == torch.bfloat16 and tok.vocab_size == len(tokenizer[0])


def test_linear_rope_scaling(tmp_path, tokenizer, ids):
    """llama.cpp writes HF's rope_scaling {linear, factor} as rope.scaling.type / rope.scaling.factor."""
    vocab = len(tokenizer[0])
    cfg = transformers.LlamaConfig(hidden_size=N_HEADS * HEAD_DIM, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=N_HEADS, num_key_value_heads=N_KV, vocab_size=vocab,
                                   max_position_embeddings=64, rms_norm_eps=1e-5,
                                   rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5})
    hf = _randomize(transformers.LlamaForCausalLM(cfg), seed=4)

    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.5)
    model, _ = load_model(write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer, extra=linear))
    torch.testing.assert_close(_logits(model, ids), _hf_logits(hf, ids), atol=1e-4, rtol=0)
    assert model.args.rope_scaling.kind == "linear" and model.args.rope_scaling.factor == 2.5


# ---- files graphopt cannot load: one CheckpointError naming the file ----

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
def llama31(tmp_path_factory, tokenizer):
    """(hf with llama3 RoPE scaling, its GGUF with rope_freqs.weight, the divisors, 40 token ids)."""
    vocab = len(tokenizer[0])
    cfg = transformers.LlamaConfig(hidden_size=N_HEADS * HEAD_DIM, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=N_HEADS, num_key_value_heads=N_KV, vocab_size=vocab,
                                   max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE))
    hf = _randomize(transformers.LlamaForCausalLM(cfg), seed=5)
    divisors = _llama3_rope_freqs(cfg)
    assert divisors.shape == (HEAD_DIM // 2,) and divisors[0] > 1 and divisors[-1] == 8.0  # a band interpolated
    path = write_gguf(tmp_path_factory.mktemp("llama31") / "m.gguf", hf, "llama", tokenizer,
                      extra=lambda w: w.add_tensor("rope_freqs.weight", divisors))
    ids = torch.tensor([tokenizer[3].encode(" ".join(TEXT), add_special_tokens=False)[:40]])
    assert ids.shape == (1, 40)
    return hf, path, divisors, ids


def test_llama31_rope_freqs_give_transformers_llama3_logits(llama31):
    """Llama-3.1/3.2 GGUFs carry the llama3 RoPE scaling as rope_freqs.weight (divisors of the base
    frequencies): read into RopeScaling("freq_factors"), the logits are transformers' llama3 model's."""
    hf, path, divisors, ids = llama31
    model, _ = load_model(path)
    s = model.args.rope_scaling
    assert s.kind == "freq_factors" and s.factors == tuple(float(d) for d in divisors)
    ours, ref = _logits(model, ids), _hf_logits(hf, ids)
    diff = (ours - ref).abs().max().item()
    print(f"llama3 rope_freqs GGUF vs transformers llama3: max |dlogit| {diff:.3g} over {ids.shape[1]} tokens")
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    from dataclasses import replace

    from graphopt.model import Transformer
    plain = Transformer(replace(model.args, rope_scaling=None))  # the scaling matters on these inputs
    plain.load_state_dict(model.state_dict())
    assert (_logits(plain.eval(), ids) - ref).abs().max() > 1e-2


def test_rope_freqs_survive_to_dict_meta_save_and_load_shard(llama31, tmp_path):
    """The divisors go through ModelArgs.to_dict (JSON), save_meta_checkpoint's params.json and back, and
    load_shard rebuilds the same RoPE tables from them."""
    import json

    from graphopt.checkpoints import load_meta_checkpoint, save_meta_checkpoint
    from graphopt.distributed.load_shard import load_shard
    from graphopt.graph_capture import capture
    from graphopt.model import ModelArgs, Transformer, init_random_weights
    from graphopt.scoring.batch import ScoreModule

    _, path, _, ids = llama31
    model, _ = load_model(path)
    assert ModelArgs(**json.loads(json.dumps(model.args.to_dict()))) == model.args
    save_meta_checkpoint(model, tmp_path, n_shards=2)
    assert json.loads((tmp_path / "params.json").read_text())["rope_scaling"]["kind"] == "freq_factors"
    back = load_meta_checkpoint(tmp_path)
    assert back.args == model.args
    torch.testing.assert_close(back.rope_cos, model.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(_logits(back, ids), _logits(model, ids), atol=0, rtol=0)

    from tests.test_capture import score_inputs
    x = score_inputs(2, 40, 7, vocab=model.args.vocab_size, seed=3)  # positions up to 39: every band in use
    gm = capture(ScoreModule(init_random_weights(Transformer(model.args), seed=1).eval()), x).to("meta")
    # weightless, as a sharded worker's graph: load_shard fills what is on the meta device
    load_shard(gm, tmp_path, 0, 1, model.args)
    with torch.no_grad():
        torch.testing.assert_close(gm(*x), ScoreModule(model)(*x), atol=1e-5, rtol=0)


def test_rope_freqs_of_the_wrong_shape(tmp_path, tokenizer):
    hf = _hf_model("llama", len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer,
                      extra=lambda w: w.add_tensor("rope_freqs.weight", np.ones(HEAD_DIM, np.float32)))
    with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'rope_freqs\.weight'.*shape \[16\], expected \[8\]"):
        load_model(path)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, tokenizer):
    hf = _hf_model("llama", len(tokenizer[0]), False)
    return write_gguf(tmp_path_factory.mktemp("good") / "m.gguf", hf, "llama", tokenizer, qtype=Q8)


@pytest.mark.parametrize("cut", [0, 3, 1000, -100])
def test_truncated_or_corrupt_gguf(tmp_path, good_file, cut):
    data = good_file.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:cut])  # empty, inside the magic, inside the metadata, inside the last tensor
    with pytest.raises(CheckpointError, match=r"bad\.gguf.*(not a readable GGUF|cannot read)"):
        load_model(bad)


def test_not_a_gguf_at_all(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(CheckpointError, match=r"model\.gguf: not a readable GGUF file"):
        load_model(bad)


def test_unsupported_architecture(tmp_path, tokenizer):
    hf = _hf_model("llama", len(tokenizer[0]), False)
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
    hf = _hf_model("llama", len(tokenizer[0]), False)
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
    hf = _hf_model("llama", len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_XX.weight", 1))
    with pytest.raises(CheckpointError, match=r"m\.gguf: checkpoint lacks 1 tensor.*layers\.1\.feed_forward\.w3"):
        load_model(path)
