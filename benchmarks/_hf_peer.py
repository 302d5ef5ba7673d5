"""The Hugging Face peer: the same weights in `transformers.LlamaForCausalLM`, scored the way
lm-evaluation-harness's HFLM does (length-sorted batches, right padding, full-vocabulary
log_softmax, gather at the continuation positions). Used by benchmarks only — never at run time."""
from __future__ import annotations

import torch

from graphopt.scoring.batch import Request


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute q/k rows from Meta's interleaved-pair RoPE layout to HF's rotate-half layout."""
    out_features, in_features = w.shape
    return w.view(n_heads, out_features // n_heads // 2, 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def to_transformers(model):
    """Our Transformer -> an equivalent transformers.LlamaForCausalLM (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    a = model.args
    assert not a.qkv_bias, "LlamaForCausalLM has no qkv-only bias (that is Qwen2)"
    config = LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.hidden_dim,
                         num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads,
                         num_key_value_heads=a.n_kv_heads, rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta,
                         max_position_embeddings=a.max_seq_len, tie_word_embeddings=a.tie_embeddings)
    hf = LlamaForCausalLM(config)
    sd = model.state_dict()
    new = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    for i in range(a.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        new[q + "self_attn.q_proj.weight"] = meta_to_hf_rows(sd[p + "attention.wq.weight"], a.n_heads)
        new[q + "self_attn.k_proj.weight"] = meta_to_hf_rows(sd[p + "attention.wk.weight"], a.n_kv_heads)
        new[q + "self_attn.v_proj.weight"] = sd[p + "attention.wv.weight"]
        new[q + "self_attn.o_proj.weight"] = sd[p + "attention.wo.weight"]
        new[q + "mlp.gate_proj.weight"] = sd[p + "feed_forward.w1.weight"]
        new[q + "mlp.down_proj.weight"] = sd[p + "feed_forward.w2.weight"]
        new[q + "mlp.up_proj.weight"] = sd[p + "feed_forward.w3.weight"]
        new[q + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        new[q + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
    hf.load_state_dict(new, strict=not a.tie_embeddings)
    return hf.eval()


@torch.no_grad()
def hf_batched_loglik(hf_model, requests: list[Request], batch_size: int = 8) -> torch.Tensor:
    """lm-evaluation-harness style: sort by length (longest first), right-pad, score. -> float64 [R]"""
    out = torch.zeros(len(requests), dtype=torch.float64)
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context_ids) + len(requests[i].continuation_ids)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [list(requests[i].context_ids + requests[i].continuation_ids)[:-1] for i in idx]
        T = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])  # [B, T]
        logprobs = torch.log_softmax(hf_model(input_ids=ids).logits.float(), dim=-1)  # [B, T, V]
        for b, i in enumerate(idx):
            req = requests[i]
            C, X = len(req.context_ids), len(req.continuation_ids)
            pos = torch.arange(C - 1, C + X - 1)
            out[i] = logprobs[b, pos, torch.tensor(req.continuation_ids)].double().sum()
    return out
