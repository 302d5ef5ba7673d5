"""The generation graph: one forward that prefills prompts and runs decode steps, captured and optimised
once (graphopt.optimize) for every batch, prompt length and cache width.

    NextTokenModule(model)(input_ids [B, T], positions [B, T], mask [B, T, P + T], score_idx [N],
                           cache [2, L, B, Hkv, P, D]) -> (next ids [N] int64, K/V of the rows' tokens
                                                         [2, L, B, Hkv, T, D])

It is the model reading a KV cache (graphopt.model.llama) with the greedy next token at the N flat
positions of score_idx: a prompt's prefill is B = 1, T = its tokens (score_idx: its last position), a
decode step is T = 1 over a static cache of P slots (score_idx: every row). The passes see the same
LM-head tail as scoring's (reshape, index at score_idx) with an argmax instead of a log-softmax, so
prune_lm_head computes the head at the N positions only and fused_logprob makes it one
graphopt.linear_argmax node (no log-probs, no [N, V] logits at once).

`generation_pipeline` adds cache_attention and lean_graph to a pipeline (after its other passes): every
attention then reads the cache in place instead of concatenating it with the new keys per layer per
step, the cache input takes the dtype the attention reads it in (KVLayout.of_graph says what to
allocate), and the step makes fewer Python calls (export's asserts, no-op casts, nested weight names).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from graphopt.optimize_model import Optimized, optimize
from graphopt.pipeline import PassError, PassSpec, check_pipeline, parse_pipeline
from graphopt.scoring.prefix_cache import KVLayout

CACHE_ATTENTION, LEAN_GRAPH = "cache_attention", "lean_graph"


class NextTokenModule(nn.Module):
    """See the module docstring. with_logits=True also returns the [N, V] float32 logits (tests compare
    them with a full recomputation; the head is then not fused into linear_argmax)."""

    def __init__(self, model: nn.Module, with_logits: bool = False):
        super().__init__()
        self.model = model
        self.with_logits = with_logits

    def forward(self, input_ids: Tensor, positions: Tensor, mask: Tensor, score_idx: Tensor,
                cache: Tensor) -> tuple[Tensor, ...]:
        logits, new_cache = self.model(input_ids, positions, mask, cache)  # [B, T, V], [2, L, B, Hkv, T, D]
        flat = logits.reshape(-1, logits.shape[-1])[score_idx].float()  # [N, V]
        next_ids = flat.argmax(-1)  # [N]: the first of equal maxima, as torch.argmax
        return (next_ids, new_cache, flat) if self.with_logits else (next_ids, new_cache)


def step_example_inputs(layout: KVLayout, device="cpu", B: int = 2, T: int = 3, P: int = 4, N: int = 2) -> tuple:
    """Inputs to capture NextTokenModule on: distinct sizes >= 2, so B, T, P and N stay symbolic."""
    ids = torch.zeros(B, T, dtype=torch.long, device=device)
    positions = torch.arange(P, P + T, device=device).expand(B, T).contiguous()
    mask = torch.ones(T, P + T, dtype=torch.bool, device=device).tril(P).expand(B, T, P + T).contiguous()
    return ids, positions, mask, torch.arange(N, device=device), layout.empty(B, P, device)


def decode_auto_pipeline(device, compiler: str | None = None) -> str:
    """The pipeline generation uses by default: decode-cpu on CPU (exact, its matmuls on packed oneDNN
    weights, no Triton-kernel fusions) where the compiler can run it, else exact; exact on CUDA (the
    Triton kernels)."""
    if torch.device(device).type == "cuda":
        return "exact"
    try:
        check_pipeline("decode-cpu", compiler or "none")
    except PassError:
        return "exact"
    return "decode-cpu"


def generation_pipeline(pipeline, cache_attention: bool = True, lean: bool = True) -> list[PassSpec]:
    """The pipeline's specs with cache_attention and lean_graph (fewer Python calls per step) added after
    the others (before a pass that must run last, pipeline_split), each unless it is there already or
    switched off."""
    specs = parse_pipeline(pipeline)
    names = {s.name for s in specs}
    extra = [n for n, on in ((CACHE_ATTENTION, cache_attention), (LEAN_GRAPH, lean)) if on and n not in names]
    last = [i for i, s in enumerate(specs) if any(r.first == "*" and r.then == s.name for r in s.info.rules)]
    at = last[0] if last else len(specs)
    return specs[:at] + parse_pipeline(extra) + specs[at:]


@dataclass
class GenerationGraph:
    """What the decode engine runs: `run` (the optimised graph, or the eager module when no pipeline was
    given) and the K/V one cached token holds in it (kv heads after sharding / pruning, the dtype its
    attention reads)."""
    run: object
    layout: KVLayout
    optimized: Optimized | None = None
    with_logits: bool = False  # run also returns the [N, V] logits

    @property
    def pass_names(self) -> list[str]:
        return [r.name for r in self.optimized.records] if self.optimized is not None else []


def build_generation_graph(model: nn.Module, pipeline=None, compiler: str = "none", device=None,
                           cache_attention: bool = True, lean: bool = True, with_logits: bool = False,
                           **optimize_kwargs) -> GenerationGraph:
    """NextTokenModule(model) captured once and optimised by `pipeline` (+ cache_attention, lean_graph: see
    generation_pipeline) and `compiler` through graphopt.optimize. pipeline None: the eager module
    itself (no capture; `compiler` still applies). optimize_kwargs go to graphopt.optimize (rank,
    world_size, tokenizer, ...)."""
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    layout = KVLayout.of_args(model.args)
    layout = KVLayout(layout.n_layers, layout.n_kv_heads, layout.head_dim, param.dtype)
    module = NextTokenModule(model, with_logits=with_logits).eval()
    if pipeline is None:
        opt = optimize(module, (), None, compiler, capture="none", **optimize_kwargs)
        return GenerationGraph(opt, layout, None, with_logits)
    specs = generation_pipeline(pipeline, cache_attention, lean)
    opt = optimize(module, step_example_inputs(layout, device), specs, compiler, **optimize_kwargs)
    return GenerationGraph(opt, KVLayout.of_graph(opt.graph), opt, with_logits)
