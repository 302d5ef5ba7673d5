"""benchmarks/mfu.py: the FLOP count equals a hand count on a known layout, the device-side random
model is a real LLaMA of the preset's shape, and the script runs end to end on CPU."""
import torch

from benchmarks.mfu import layer_param_counts, main, model_flops, random_model
from graphopt.model import ModelArgs
from graphopt.scoring.batch import Request
from graphopt.scoring.strategies import build_batches


def test_model_flops_hand_count():
    args = ModelArgs.from_name("tiny-gqa")  # dim 64, 2 layers, 4 heads / 2 kv heads, vocab 512
    # one question: context of 3 tokens, two endings of 2 tokens -> fed 3 + 1 + 1 = 5 tokens, 4 scored
    requests = [Request(0, 0, (1, 2, 3), (4, 5), 3), Request(0, 1, (1, 2, 3), (6, 7), 3)]
    batches = build_batches(requests, "packed")
    visible = 6 + 4 + 4  # context causal 3*4/2; each ending token: 3 context keys + itself
    body = sum(layer_param_counts(args)) * args.n_layers
    expected = 2 * body * 5 + 2 * args.dim * args.vocab_size * 4 + 4 * args.dim * visible * args.n_layers
    assert model_flops(args, batches) == expected


def test_random_model_shape_and_init():
    args = ModelArgs.from_name("tiny-gqa")
    model = random_model(args, torch.bfloat16, "cpu")
    assert model.layers[0].attention.wk.weight.shape == (args.n_kv_heads * args.head_dim, args.dim)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert 0.01 < model.layers[0].feed_forward.w1.weight.float().std() < 0.03
    assert model.rope_cos.dtype == torch.float32


def test_script_runs_on_cpu(capsys):
    assert main(["--device", "cpu", "--preset", "tiny", "--dtype", "float32", "--questions", "4",
                 "--max-tokens", "256", "--repeats", "1", "--peak-tflops", "1"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 |")]
    assert len(row) == 1 and row[0].count("|") == 11
