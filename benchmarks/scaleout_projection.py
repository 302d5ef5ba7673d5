"""Projected full-HellaSwag time for LLaMA-30B on several GPU layouts, derived from the one-H100
measurement in benchmarks/RESULTS.md (MFU section) and each layout's communication volume.

    python -m benchmarks.scaleout_projection          # markdown table

Nothing here is measured on the layouts themselves: every figure follows from the constants below,
each named with where it comes from, so a reader can change one and see what moves.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

# measured (benchmarks/RESULTS.md, "Model FLOP/s utilisation on one H100"): 256 packed questions of the
# LLaMA-30B shape, exact passes + prefix_attention, bf16, one H100 80GB
MEASURED_TFLOP_PER_QUESTION = 2180 / 256  # model FLOPs (real tokens only)
MEASURED_TOKENS_PER_QUESTION = 33_741 / 256  # fed tokens, each context once
MEASURED_MFU = 0.622  # of the 989 TFLOP/s datasheet
MEASURED_SETUP_S = 42.0  # export + passes + first calls of the 60-layer graph (41-43 s)
QUESTIONS = 10_042

# LLaMA-30B
N_LAYERS, DIM, PARAMS = 60, 6656, 32.53e9
WEIGHT_BYTES = PARAMS * 2  # fp16 / bf16


@dataclass(frozen=True)
class Device:
    name: str
    peak_tflops: float  # dense fp16/bf16 tensor-core datasheet
    memory_gb: float
    allreduce_gbps: float  # NCCL all-reduce bus bandwidth inside a node (nccl-tests' busbw)


V100 = Device("V100 32GB SXM2", 125.0, 32.0, 130.0)  # DGX-1 hybrid cube-mesh NVLink
H100 = Device("H100 80GB SXM", 989.0, 80.0, 450.0)  # NVLink 4 / NVSwitch


@dataclass(frozen=True)
class Layout:
    label: str
    device: Device
    dp: int
    tp: int
    pp: int
    nodes: int = 1
    micro_batches: int = 64  # per pipeline: the bubble is (pp-1)/(m+pp-1)

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp


def weights_per_gpu_gb(layout: Layout) -> float:
    return WEIGHT_BYTES / (layout.tp * layout.pp) / 1e9


def tp_bytes_per_token(tp: int) -> float:
    """What one GPU sends and receives per token for tensor parallelism: two all-reduces of [dim] fp16
    per layer (after attention and after the FFN), a ring moving 2(p-1)/p of the payload."""
    return 0.0 if tp == 1 else 2 * N_LAYERS * DIM * 2 * 2 * (tp - 1) / tp


def project(layout: Layout, mfu: float = MEASURED_MFU) -> dict:
    """Seconds for the full validation set: compute at `mfu` of the device's peak split over every GPU,
    the pipeline bubble, tensor-parallel all-reduces (not overlapped: an upper bound), the gather of the
    answers (10,042 × 4 float64 to rank 0: negligible) and the one-time setup measured on one H100."""
    flops = MEASURED_TFLOP_PER_QUESTION * 1e12 * QUESTIONS
    compute_s = flops / (layout.gpus * layout.device.peak_tflops * 1e12 * mfu)
    bubble = (layout.pp - 1) / (layout.micro_batches + layout.pp - 1)
    compute_s /= (1 - bubble)
    tokens_per_tp_group = MEASURED_TOKENS_PER_QUESTION * QUESTIONS / (layout.dp * layout.pp)
    comm_s = tokens_per_tp_group * tp_bytes_per_token(layout.tp) / (layout.device.allreduce_gbps * 1e9)
    fits = weights_per_gpu_gb(layout) < layout.device.memory_gb * 0.85  # room for activations
    return {"compute_s": compute_s, "comm_s": comm_s, "setup_s": MEASURED_SETUP_S,
            "total_s": compute_s + comm_s + MEASURED_SETUP_S, "weights_gb": weights_per_gpu_gb(layout), "fits": fits}


LAYOUTS = [
    Layout("4 × V100: TP 4", V100, dp=1, tp=4, pp=1),
    Layout("4 × V100: PP 4", V100, dp=1, tp=1, pp=4),
    Layout("4 × V100: DP 4", V100, dp=4, tp=1, pp=1),
    Layout("8 × H100: DP 8", H100, dp=8, tp=1, pp=1),
    Layout("8 × H100: DP 4 × TP 2", H100, dp=4, tp=2, pp=1),
    Layout("2 nodes × 8 H100: DP 16", H100, dp=16, tp=1, pp=1, nodes=2),
]


def table(mfus=(MEASURED_MFU, 0.45)) -> str:
    head = ("| layout | weights / GPU | fits | compute s | TP comm s | setup s | total s "
            + "".join(f"| total at {m:.0%} MFU " for m in mfus[1:]) + "|")
    lines = [head, "|" + "---|" * (7 + len(mfus) - 1)]
    for layout in LAYOUTS:
        p = project(layout, mfus[0])
        if not p["fits"]:
            lines.append(f"| {layout.label} | {p['weights_gb']:.1f} GB | no | – | – | – | – "
                         + "| – " * (len(mfus) - 1) + "|")
            continue
        others = "".join(f"| {project(layout, m)['total_s']:.0f} " for m in mfus[1:])
        lines.append(f"| {layout.label} | {p['weights_gb']:.1f} GB | yes | {p['compute_s']:.0f} | {p['comm_s']:.1f} "
                     f"| {p['setup_s']:.0f} | **{p['total_s']:.0f}** {others}|")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mfu", type=float, nargs="+", default=[MEASURED_MFU, 0.45],
                        help="model FLOP/s utilisations to project at (first: the table's main column)")
    args = parser.parse_args(argv)
    print(table(tuple(args.mfu)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
