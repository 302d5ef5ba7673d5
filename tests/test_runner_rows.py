"""Result rows name the dtype a run computes in, not only the dtype it loads in."""
from graphopt.runner.execute import compute_dtype
from graphopt.runner.schema import config_from_dict
from graphopt.runner.sweep import expand


def test_cast_dtype_run_reports_the_cast_dtype():
    cfg = config_from_dict({"model": "tiny", "runs": [
        {"name": "fp32", "capture": "export", "passes": ["fuse_rmsnorm"]},
        {"name": "bf16", "capture": "export", "passes": ["fuse_rmsnorm", {"name": "cast_dtype", "dtype": "bfloat16"}]},
        {"name": "fp16", "capture": "export", "passes": [{"name": "cast_dtype", "dtype": "float16"}]},
        {"name": "bf16 default", "capture": "export", "passes": ["cast_dtype"]},
        {"name": "w8a8", "capture": "export", "passes": ["cast_dtype", "quantize_int8"]},
    ]}, "<test>", {})
    dtypes = {run.name: compute_dtype(run) for run in expand(cfg)}
    assert dtypes == {"reference": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                      "bf16 default": "bfloat16", "w8a8": "int8+bfloat16"}


def test_dynamo_run_counts_parameters_of_the_pruned_graph():
    """A dynamo-captured run reports the parameters of the graph the backend optimised (pruned), not
    the eager model's."""
    import torch

    import graphopt
    from graphopt.runner.worker import _graph_of, build_callable, count_params
    from graphopt.scoring import ScoreModule, build_batches, build_requests

    torch._dynamo.reset()
    model, tokenizer = graphopt.load_model("tiny")
    batches = build_batches(build_requests(graphopt.load_hellaswag(None, limit=2), tokenizer), "padded")
    run = {"capture": "dynamo", "compiler": "none", "passes": [("prune_structured", {"ratio": 0.25, "what": "ffn"})]}
    fn, records = build_callable(ScoreModule(model).eval(), batches[0].model_inputs(), run, model.args, 1)
    with torch.inference_mode():
        fn(*batches[0].model_inputs())
    full = sum(p.numel() for p in model.parameters())
    ffn_removed = model.args.n_layers * 3 * model.args.dim * (model.args.hidden_dim // 4)
    assert count_params(_graph_of(fn, records), model) == full - ffn_removed
