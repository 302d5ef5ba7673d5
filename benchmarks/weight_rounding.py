"""How much does rounding the weights alone move the answers? Each linear weight of the layers rounded to
b bits per output channel (symmetric, as quantize_int8 rounds them; the LM head stays as it is, as
there, unless --lm-head), everything computed in fp32, against the unrounded model on the same batches:

    python -m benchmarks.weight_rounding                          # bench-100m, 200 questions, 8-11 bits
    python -m benchmarks.weight_rounding --preset tiny --questions 8 --bits 4 8

Prints, per bit width, how many questions changed their choice (acc or acc_norm) and the largest
|Δ log-likelihood|. Used to separate weight rounding from activation rounding in the int8 results.
"""
from __future__ import annotations

import argparse

import torch

import graphopt
from benchmarks._common import layout_batches, optimised_graph
from graphopt.scoring import build_requests, choice_metrics, same_choices, score_requests


def round_weights_(model: torch.nn.Module, originals: dict[str, torch.Tensor], bits: int) -> None:
    """Each parameter named in `originals` set to its original rounded to `bits` per output channel."""
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in originals:
                w = originals[name]  # [out, in]
                scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / qmax  # [out, 1]
                p.copy_((w / scale).round().clamp(-qmax, qmax) * scale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="bench-100m", help="model preset (random weights)")
    p.add_argument("--questions", type=int, default=200, help="synthetic HellaSwag-format questions")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 9, 10, 11], help="bit widths to try")
    p.add_argument("--compiler", default="inductor", help="none | inductor (as graphopt.compilers names them)")
    p.add_argument("--lm-head", action="store_true", help="round the LM head (output.weight) too")
    args = p.parse_args(argv)
    if any(not 2 <= b <= 16 for b in args.bits):
        p.error(f"--bits must be between 2 and 16, got {args.bits}")
    torch.manual_seed(0)
    model, tokenizer = graphopt.load_model(args.preset)
    rows = graphopt.load_hellaswag(None, limit=args.questions)
    requests = build_requests(rows, tokenizer)
    packed = layout_batches(model, requests, "packed", row_len=128, max_tokens=512)

    def score():
        fn, _ = optimised_graph(model, packed, "exact", args.compiler)
        with torch.inference_mode():
            return score_requests(fn, packed, len(requests), progress=False)

    ref_ll = score()
    ref = choice_metrics(rows, requests, ref_ll)
    originals = {n: q.detach().clone() for n, q in model.named_parameters()
                 if (q.dim() == 2 and n.startswith("layers.")) or (args.lm_head and n == "output.weight")}
    print(f"# weight rounding: {args.preset}, {len(rows)} questions, {len(originals)} weights rounded "
          f"(LM head {'too' if args.lm_head else 'not'}), fp32 math, compiler {args.compiler}")
    print("| weight bits | changed choices | max abs dloglik |")
    print("|---:|---:|---:|")
    for bits in args.bits:
        round_weights_(model, originals, bits)
        ll = score()
        print(f"| {bits} | {same_choices(choice_metrics(rows, requests, ll), ref).count(False)}/{len(rows)} | "
              f"{(ll - ref_ll).abs().max().item():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
