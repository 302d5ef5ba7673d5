"""Tiny GGUF files for the GGUF tests (tests/test_gguf*.py), written as llama.cpp's converter writes
them: transformers models (F32 or Q8_0, permuted q/k for "llama", HF order for "qwen2"/"qwen3") and a
byte-level BPE vocabulary trained here in the metadata. The tokenizer and the ids the tests read are
session fixtures in tests/conftest.py (gguf_tokenizer, gguf_ids)."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from tests._builders import randomize_hf  # noqa: E402

Q8 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32
TEXT = ["The cat sat on the mat, and the dog slept by the door.", "A man is cooking pasta in a kitchen.",
        "She paints the fence white before the rain comes.", "Kids play football in the park after school."]
SAMPLES = ["The dog sat by the kitchen door.", " leading space, then 3 digits 123!", "naïve café\nnew line"]
N_HEADS, N_KV, HEAD_DIM = 6, 2, 16  # GQA; dim 96: a Q8_0 block (32) divides every row
QWEN3_HEAD_DIM = 32  # Qwen3 sets head_dim apart from hidden_size / heads: the file says so in key_length


def train_tokenizer():
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


def hf_model(kind: str, vocab: int, tied: bool):
    common = dict(hidden_size=N_HEADS * HEAD_DIM, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=N_HEADS, num_key_value_heads=N_KV, vocab_size=vocab,
                  max_position_embeddings=64, tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=10000.0,
                  bos_token_id=0, eos_token_id=1)
    if kind == "llama":
        return randomize_hf(transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)), seed=1)
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(**common, head_dim=QWEN3_HEAD_DIM)
        return randomize_hf(transformers.Qwen3ForCausalLM(cfg), seed=3)
    return randomize_hf(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)), seed=2)


def head_dim_of(hf) -> int:
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
    w.add_rope_dimension_count(head_dim_of(hf))
    if head_dim_of(hf) != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(head_dim_of(hf))
        w.add_value_length(head_dim_of(hf))
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


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids)


def hf_logits_of(hf, ids):
    with torch.no_grad():
        return hf(input_ids=ids).logits
