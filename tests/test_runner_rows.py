"""Result rows name the dtype a run computes in, not only the dtype it loads in (as the passes declare
it), and count the parameters of the graph that runs."""
from graphopt.pipeline import pipeline_dtype
from graphopt.runner.config import config_from_dict
from graphopt.runner.sweep import expand


def test_cast_dtype_run_reports_the_cast_dtype():
    cfg = config_from_dict({"model": "tiny", "runs": [
        {"name": "fp32", "capture": "export", "passes": ["fuse_rmsnorm"]},
        {"name": "bf16", "capture": "export", "passes": ["fuse_rmsnorm", {"name": "cast_dtype", "dtype": "bfloat16"}]},
        {"name": "fp16", "capture": "export", "passes": [{"name": "cast_dtype", "dtype": "float16"}]},
        {"name": "bf16 default", "capture": "export", "passes": ["cast_dtype"]},
        {"name": "w8a8", "capture": "export", "passes": ["cast_dtype", "quantize_int8"]},
        {"name": "named int8", "capture": "export", "passes": "int8"},
        {"name": "named fast, fp16", "capture": "export", "passes": ["fast", {"name": "cast_dtype", "dtype": "float16"}]},
    ]}, "<test>", {})
    dtypes = {run.name: pipeline_dtype(run.passes, run.dtype) for run in expand(cfg)}
    assert dtypes == {"reference": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                      "bf16 default": "bfloat16", "w8a8": "int8+bfloat16", "named int8": "int8+bfloat16",
                      "named fast, fp16": "float16"}


def test_dynamo_run_counts_parameters_of_the_pruned_graph():
    """A dynamo-captured run reports the parameters of the graph the backend optimised (pruned), not
    the eager model's."""
    import torch

    import graphopt
    from graphopt.runner.worker import count_params
    from graphopt.scoring import ScoreModule, build_batches, build_requests

    torch._dynamo.reset()
    model, tokenizer = graphopt.load_model("tiny")
    batches = build_batches(build_requests(graphopt.load_hellaswag(None, limit=2), tokenizer), "padded")
    fn = graphopt.optimize(ScoreModule(model).eval(), batches[0].model_inputs(),
                           [("prune_structured", {"ratio": 0.25, "what": "ffn"})], capture="dynamo")
    with torch.inference_mode():
        fn(*batches[0].model_inputs())
    full = sum(p.numel() for p in model.parameters())
    ffn_removed = model.args.n_layers * 3 * model.args.dim * (model.args.hidden_dim // 4)
    assert fn.records[0].name == "prune_structured" and fn.records[0].matches == model.args.n_layers
    assert count_params(fn.graph, model) == full - ffn_removed
