"""GGUF loading: tiny transformers models written as llama.cpp's converter writes them (F32 and Q8_0,
permuted q/k for "llama", HF order for "qwen2"/"qwen3", a byte-level BPE vocabulary in the metadata) give
transformers' logits and tokens, in fp32 and half precision; transformers reads the test files as graphopt
does; linear RoPE scaling."""
import pytest
import torch

from graphopt.checkpoints import load_model, load_model_structure
from tests._gguf_files import F32, Q8, TEXT, SAMPLES, N_HEADS, N_KV, HEAD_DIM, gguf, transformers, randomize, hf_model, head_dim_of, write_gguf, tokenizer, ids, logits_of, hf_logits_of  # noqa: F401 (fixtures)


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", True)])
def test_f32_gguf_gives_transformers_logits(tmp_path, tokenizer, ids, kind, tied):
    hf = hf_model(kind, len(tokenizer[0]), tied)
    path = write_gguf(tmp_path / "m.gguf", hf, kind, tokenizer)
    model, _ = load_model(path)
    assert model.args.tie_embeddings == tied and model.args.qkv_bias == (kind == "qwen2")
    assert model.args.qk_norm == (kind == "qwen3")
    assert (model.args.n_heads, model.args.n_kv_heads, model.args.head_dim) == (N_HEADS, N_KV, head_dim_of(hf))
    if tied:
        assert model.output.weight is model.tok_embeddings.weight
    torch.testing.assert_close(logits_of(model, ids), hf_logits_of(hf, ids), atol=1e-4, rtol=0)


def test_unpermuted_llama_gguf_is_detected_by_the_logits(tmp_path, tokenizer, ids):
    """The comparison above can fail: q/k written in HF's order under "llama" change the logits."""
    hf = hf_model("llama", len(tokenizer[0]), False)
    model, _ = load_model(write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer, permute=False))
    assert (logits_of(model, ids) - hf_logits_of(hf, ids)).abs().max() > 1e-2


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
    hf = hf_model(kind, len(tokenizer[0]), tied=kind == "llama")
    model, _ = load_model(write_gguf(tmp_path / "m.gguf", hf, kind, tokenizer, qtype=Q8))
    ours = logits_of(model, ids)
    torch.testing.assert_close(ours, hf_logits_of(_dequantized_copy(hf, Q8), ids), atol=1e-4, rtol=0)
    # and the file really was quantised: Q8_0 (|error| <= max|block| / 254, ~0.5% of a weight) moves the
    # logits, by a few % of their range here (the peaked attention of these random weights amplifies it)
    exact = hf_logits_of(hf, ids)
    gap = (ours - exact).abs().max().item()
    assert 1e-3 < gap < 0.1 * exact.abs().max().item(), (gap, exact.abs().max().item())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gguf_loads_in_half_precision(tmp_path, tokenizer, dtype):
    """Dequantised to float32, then rounded once to the requested dtype: the float32 load, cast."""
    hf = hf_model("llama", len(tokenizer[0]), False)
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
    hf = hf_model(kind, len(tokenizer[0]), False)
    path = write_gguf(tmp_path / "m.gguf", hf, kind, tokenizer, qtype=qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    model, tok = load_model(path)
    torch.testing.assert_close(logits_of(model, ids), hf_logits_of(theirs, ids), atol=1e-4, rtol=0)
    their_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for s in SAMPLES:
        assert tok.encode(s) == their_tok.encode(s, add_special_tokens=False)


def test_gguf_tokenizer_matches_the_original(tmp_path, tokenizer):
    tokens, _, _, fast = tokenizer
    hf = hf_model("llama", len(tokens), True)
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

    from graphopt.checkpoints.gguf_reader import open_gguf
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
    hf = hf_model("qwen2", len(tokenizer[0]), False)
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
    hf = randomize(transformers.LlamaForCausalLM(cfg), seed=4)

    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.5)
    model, _ = load_model(write_gguf(tmp_path / "m.gguf", hf, "llama", tokenizer, extra=linear))
    torch.testing.assert_close(logits_of(model, ids), hf_logits_of(hf, ids), atol=1e-4, rtol=0)
    assert model.args.rope_scaling.kind == "linear" and model.args.rope_scaling.factor == 2.5
