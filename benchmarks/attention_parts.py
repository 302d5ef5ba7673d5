"""What each part of graphopt::prefix_attention costs, on packed scoring rows: the whole op, the
doc_starts bound it computes first, and the kernel launch alone with each choice of key-loop start
and output layout.

    python -m benchmarks.attention_parts                  # CUDA: LLaMA-30B heads, rows of 256 and 2048
    python -m benchmarks.attention_parts --device cpu --quick   # tiny shapes under the Triton interpreter

Variants of the launch (same kernel, same inputs, outputs compared with the whole op's):
  starts int32    the key loop of each query block starts at its questions' first token (the op's own)
  starts int64    the same bound in int64 (the loop then counts in 64-bit integers)
  starts 0        every query block walks the row from its first key block (the bound off)
  out [B,H,T,D]   int32 starts, output written head-major (the transpose before wo is then a copy)"""
from __future__ import annotations

import argparse

import torch

from benchmarks._common import packed_layout, time_ms
from graphopt.kernels.prefix_attention import doc_starts, launch_prefix_attention, prefix_attention_triton

# (label, B, H, Hkv, T, head_dim, context, ending): LLaMA-30B heads; rows of 256 as benchmarks.kernels
# times them, rows of 2048 as benchmarks.mfu packs them (questions of 48 + 4 x 20 tokens)
CUDA_SHAPES = [("30b rows 256", 8, 52, 52, 256, 128, 48, 20), ("30b rows 2048", 8, 52, 52, 2048, 128, 48, 20)]
QUICK_SHAPES = [("tiny rows 64", 1, 2, 1, 64, 16, 6, 3)]


def variants(q, k, v, doc, seg, scale) -> dict:
    """name -> zero-argument callable returning [B, H, T, D]."""
    B, H, T, D = q.shape
    starts32 = doc_starts(doc)

    def launch(starts, head_major=False):
        def call():
            out = (torch.empty_like(q) if head_major else
                   torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2))
            launch_prefix_attention(q, k, v, out, doc, seg, starts, scale)
            return out
        return call

    return {"whole op (doc_starts + launch)": lambda: prefix_attention_triton(q, k, v, doc, seg, scale),
            "doc_starts alone": lambda: doc_starts(doc),
            "launch, starts int32": launch(starts32),
            "launch, starts int64": launch(starts32.long()),
            "launch, starts 0": launch(torch.zeros_like(starts32)),
            "launch, out [B,H,T,D]": launch(starts32, head_major=True)}


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes (for the interpreter on CPU)")
    p.add_argument("--reps", type=int, default=3, help="timed calls on CPU (CUDA: do_bench)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    print("| shape | variant | ms | max abs diff vs whole op |\n|---|---|---:|---:|")
    for label, B, H, Hkv, T, hd, context, ending in (QUICK_SHAPES if a.quick else CUDA_SHAPES):
        q, k, v = (torch.randn(B, h, T, hd, generator=g).to(device, dtype) for h in (H, Hkv, Hkv))
        doc, seg = packed_layout(B, T, context, ending, device=device)
        parts = variants(q, k, v, doc, seg, hd ** -0.5)
        want = parts["whole op (doc_starts + launch)"]().float()
        for name, fn in parts.items():
            ms = time_ms(fn, device, a.reps)
            diff = "" if name == "doc_starts alone" else f"{float((fn().float() - want).abs().max()):.2g}"
            print(f"| {label} | {name} | {ms:.4f} | {diff} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
