"""The runner's warm-up compiles every batch shape, so the timed passes that follow never compile:
dynamo's compiled-frame count does not move during score_requests (a warm-up under no_grad instead of
inference_mode would fail this: dynamo guards on the grad mode and recompiles)."""
import torch
from torch._dynamo.utils import counters

import graphopt
from graphopt.runner.worker import first_calls
from graphopt.scoring import ScoreModule, build_batches, build_requests, score_requests


def test_timed_passes_after_first_calls_do_not_compile():
    torch._dynamo.reset()
    model, tokenizer = graphopt.load_model("tiny")
    requests = build_requests(graphopt.load_hellaswag(None, limit=6), tokenizer)
    batches = build_batches(requests, "padded", batch_size=4)
    fn = torch.compile(ScoreModule(model).eval(), backend="eager")
    counters.clear()
    seconds, n_shapes = first_calls(fn, batches, "cpu")
    compiled_in_warmup = counters["frames"]["ok"]
    assert n_shapes == len({tuple(b.input_ids.shape) for b in batches}) >= 2
    assert compiled_in_warmup >= 1 and seconds > 0
    score_requests(fn, batches, len(requests), progress=False)
    assert counters["frames"]["ok"] == compiled_in_warmup
