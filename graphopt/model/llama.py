"""An export-friendly LLaMA: no optimisation logic, no data-dependent Python control flow.

Module names follow Meta's checkpoint keys (tok_embeddings, layers.N.attention.wq, ...), so the
Meta loader is a plain load_state_dict and the HF loader is a rename table.

Attention is written out (softmax(QK^T/sqrt(d) + mask) V) and RMSNorm / RoPE / SwiGLU are written
in plain torch ops on purpose: they are what the graph passes find and rewrite.

Family features are switched by ModelArgs and fixed when the module is built (never by tensor values):
RoPE scaling (llama3 / linear / freq_factors) changes only the cos/sin tables; Qwen3's q/k norms are RMSNorm modules
over head_dim (so fuse_rmsnorm finds them); a sliding window (Mistral) narrows the mask from the
positions input, in the layers that use it; an explicit head_dim sizes wq/wk/wv/wo.

A KV cache (forward's `cache`: the keys and values of earlier tokens, one tensor for all layers) is
read by concatenating it in front of each layer's own keys, and the forward then also returns its
tokens' keys and values: a prefix computed once for many rows, and a decode step, are this same graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.model.args import ModelArgs, RopeScaling


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in float32 (as Meta's reference does), scale in the input dtype
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def scale_inv_freq(inv_freq: Tensor, scaling: RopeScaling) -> Tensor:
    """RoPE inverse frequencies stretched for a longer context (as transformers' rope_type linear / llama3;
    freq_factors as llama.cpp's rope_freqs: each frequency divided by its factor)."""
    if scaling.kind == "freq_factors":
        factors = torch.tensor(scaling.factors, dtype=inv_freq.dtype, device=inv_freq.device)
        assert factors.shape == inv_freq.shape, \
            f"{factors.numel()} RoPE frequency factors for {inv_freq.numel()} frequencies"
        return inv_freq / factors
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    assert scaling.kind == "llama3", scaling.kind
    old = scaling.original_max_seq_len
    wavelen = 2 * math.pi / inv_freq
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    mid = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq  # between the two bands: interpolate
    out = torch.where(wavelen > old / scaling.low_freq_factor, inv_freq / scaling.factor, mid)  # long: / factor
    return torch.where(wavelen < old / scaling.high_freq_factor, inv_freq, out)  # short wavelengths: unchanged


def rope_tables(head_dim: int, max_seq_len: int, theta: float,
                scaling: RopeScaling | None = None) -> tuple[Tensor, Tensor]:
    """cos/sin tables [max_seq_len, head_dim // 2] in float32 (computed in float64)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))  # [D/2]
    if scaling is not None:
        inv_freq = scale_inv_freq(inv_freq, scaling)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # [max_seq_len, D/2]
    return angles.cos().float(), angles.sin().float()


def model_rope_tables(args: ModelArgs, max_seq_len: int | None = None) -> tuple[Tensor, Tensor]:
    """rope_tables for a model's args (its theta and scaling), max_seq_len rows (default args.max_seq_len)."""
    return rope_tables(args.head_dim, args.max_seq_len if max_seq_len is None else max_seq_len,
                       args.rope_theta, args.rope_scaling)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) as Meta's LLaMA does.

    x: [B, T, H, D]; cos, sin: [B, T, D/2] (float32). Computed in float32, returned in x's dtype.
    """
    xf = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, T, H, D/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # [B, T, 1, D/2]
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        # the checkpoint's head counts; forward reads them off the projections, so a pass that cuts
        # wq/wk/wv/wo (tensor_parallel, prune_structured) leaves views that are still right. Export still
        # records n_rep and apply_rope's [B, T, H, -1, 2] as literals: those passes set them.
        self.head_dim = args.head_dim  # head counts follow from the weights (views with -1): passes shrink them
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.qk_norm = args.qk_norm
        if args.qk_norm:  # Qwen3: one RMSNorm over head_dim, shared by all heads (weights [D])
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                cache: tuple[Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, T, dim]; mask [B, T, T] bool, or [B, T, P + T] with a cache (k, v) [B, Hkv, P, D] of P
        earlier tokens (post-RoPE k): the queries attend them first, then the row. With a cache the
        result is (out, (k, v) [B, Hkv, T, D] of this row's tokens)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, -1, self.head_dim)  # [B, T, H, D]
        k = self.wk(x).view(B, T, -1, self.head_dim)  # [B, T, Hkv, D]
        v = self.wv(x).view(B, T, -1, self.head_dim)
        if self.qk_norm:  # before RoPE, as transformers' Qwen3Attention; type_as: float32 norm weights
            # (cast_dtype keeps them) would promote a bfloat16 q / k, and SDPA needs q, k, v in one dtype
            q, k = self.q_norm(q).type_as(q), self.k_norm(k).type_as(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        new = (k, v)
        if cache is not None:  # the prefix's keys first: [B, Hkv, P + T, D]
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        n_rep = q.shape[1] // k.shape[1]  # query heads per kv head (GQA)
        assert n_rep * k.shape[1] == q.shape[1], f"{q.shape[1]} query heads, {k.shape[1]} kv heads"
        k = k.repeat_interleave(n_rep, dim=1)  # [B, H, S, D] (S = T, or P + T with a cache)
        v = v.repeat_interleave(n_rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)  # [B, H, T, S]
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        probs = F.softmax(scores.float(), dim=-1).type_as(q)
        out = torch.matmul(probs, v)  # [B, H, T, D]
        out = self.wo(out.transpose(1, 2).reshape(B, T, -1))
        return out if cache is None else (out, new)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)  # down
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # up

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                cache: tuple[Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        if cache is None:
            h = x + self.attention(self.attention_norm(x), cos, sin, mask)
            return h + self.feed_forward(self.ffn_norm(h))
        a, new = self.attention(self.attention_norm(x), cos, sin, mask, cache)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h)), new


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if torch.get_default_device().type == "meta":  # shapes only (a meta op would import torch._dynamo)
            cos, sin = (torch.empty(args.max_seq_len, args.head_dim // 2) for _ in range(2))
        else:
            cos, sin = model_rope_tables(args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: Tensor, positions: Tensor | None = None, mask: Tensor | None = None,
                cache: Tensor | None = None, return_hidden: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """input_ids [B, T]; positions [B, T] (default 0..T-1); mask bool [B, T, T], True = may
        attend (default causal). Returns logits [B, T, V], or final-norm hidden states [B, T, dim]
        when return_hidden=True (so the LM head can be applied only where scores are needed).

        cache: the keys and values of P earlier tokens, [2, n_layers, B, Hkv, P, head_dim] (k then v;
        k after RoPE), cache slot j holding the token at position j (a prefix computed once; a
        generation row's static cache, unused slots hidden by the mask). The mask is then [B, T, P + T]
        (keys: the P cache slots, then the row's T tokens; default: every slot, then causal), positions
        default to P..P+T-1, and the result is (logits or hidden, cache of this row's tokens
        [2, n_layers, B, Hkv, T, head_dim]), which appended to the cache along dim 4 extends it.

        Positions must be < args.max_seq_len (the RoPE table's length). Without positions an input
        longer than that is a ValueError (eager only: a check under export would pin T's range);
        given positions are not checked here (that would read tensor values): the request builders
        keep rows within max_seq_len (graphopt.scoring left-truncates to it).
        With args.sliding_window W, layers >= args.window_from_layer also mask keys with
        pos_q - pos_k >= W (so packed rows with reset positions keep their true distances; a cache
        slot's position is its index)."""
        B, T = input_ids.shape
        P = 0 if cache is None else cache.shape[4]
        if cache is not None and not torch.compiler.is_compiling():
            want = (2, len(self.layers), B)
            if cache.dim() != 6 or tuple(cache.shape[:3]) != want:
                raise ValueError(f"cache of shape {tuple(cache.shape)}; expected [2, n_layers, B, Hkv, P, head_dim] "
                                 f"with (2, n_layers, B) = {want}")
        if positions is None:
            if P + T > self.args.max_seq_len and not torch.compiler.is_compiling():
                raise ValueError(f"input of {P + T} tokens is longer than the model's max_seq_len "
                                 f"{self.args.max_seq_len} (its RoPE table); truncate the input or load the model "
                                 f"with a larger max_seq_len")
            positions = torch.arange(P, P + T, device=input_ids.device).unsqueeze(0).expand(B, T)
        if mask is None:
            mask = torch.ones(T, P + T, dtype=torch.bool, device=input_ids.device).tril(P)  # [T, P + T]
            mask = mask.unsqueeze(0).expand(B, T, P + T)
        window_mask = mask
        if self.args.sliding_window is not None:
            keys = positions
            if cache is not None:  # cache slot j holds position j
                keys = torch.cat([torch.arange(P, device=input_ids.device).unsqueeze(0).expand(B, P), positions], 1)
            near = (positions.unsqueeze(2) - keys.unsqueeze(1)) < self.args.sliding_window  # [B, T, P + T]
            window_mask = mask & near
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # [B, T, D/2]
        x = self.tok_embeddings(input_ids)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_mask = window_mask if i >= self.args.window_from_layer else mask
            if cache is None:
                x = layer(x, cos, sin, layer_mask)
            else:
                x, (k, v) = layer(x, cos, sin, layer_mask, (cache[0, i], cache[1, i]))
                new_k.append(k)
                new_v.append(v)
        x = self.norm(x)
        out = x if return_hidden else self.output(x)
        if cache is None:
            return out
        return out, torch.stack(new_k + new_v).unflatten(0, (2, len(self.layers)))  # [2, L, B, Hkv, T, D]


def init_random_weights(model: Transformer, seed: int = 0) -> Transformer:
    """Deterministic random init with LLaMA-like scales (std 0.02, norms 1), drawn on the device the
    parameters live on (a model made with to_empty on a GPU never passes through host memory)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name == "output.weight":
                # logits with std ~2 so a random model still has clear preferences between endings
                p.copy_(torch.randn(p.shape, generator=gen, device=device) * (2.0 / math.sqrt(p.shape[1])))
            elif p.dim() == 1:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, device=device) * 0.02)
    return model
