"""benchmarks/mfu.py: the FLOP count equals a hand count on a known layout, the device-side random
model is a real LLaMA of the preset's shape, and the script runs end to end on CPU."""
import torch

from benchmarks._common import layer_param_counts
from benchmarks.mfu import gemm_floor_seconds, main, merged_gemm_shapes, model_flops, random_model
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
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| 4 |")]
    assert len(row) == 1 and row[0].count("|") == 11
    assert "matmuls alone (F.linear), timed one by one on the graph's own shapes" in out


def test_merged_gemm_shapes_cover_the_layer_weights_once():
    for preset in ("tiny-gqa", "llama-30b", "llama-3-8b"):
        args = ModelArgs.from_name(preset)
        assert sum(k * n for k, n in merged_gemm_shapes(args)) == sum(layer_param_counts(args))


def test_gemm_floor_times_every_layer_matmul_and_the_head(monkeypatch):
    args = ModelArgs.from_name("tiny-gqa")
    requests = [Request(0, 0, (1, 2, 3), (4, 5), 3), Request(0, 1, (1, 2, 3), (6, 7), 3)]
    batches = build_batches(requests, "packed")
    calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: calls.append((x.shape, w.shape)) or real(x, w))
    assert gemm_floor_seconds(args, batches, torch.float32, "cpu", reps=1) > 0
    fed = batches[0].input_ids.numel()
    shapes = {(tuple(x), tuple(w)) for x, w in calls}  # each shape warmed up and timed, once per batch shape
    assert shapes == {((fed, k), (n, k)) for k, n in merged_gemm_shapes(args)} | {((4, 64), (512, 64))}
