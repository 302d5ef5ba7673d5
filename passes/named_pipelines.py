"""Named pipelines: the pass lists graphopt's measurements use, defined once. Usable wherever a pass
list is accepted (YAML `passes: exact` or `[exact, {name: cast_dtype, dtype: float16}]`,
`graphopt eval --pipeline fast`, the compile backend, `graphopt inspect --passes exact`)."""
from graphopt.pipeline import register_pipeline

EXACT = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention",
         "prune_lm_head", "fused_logprob", "cse", "dce"]

register_pipeline("exact", "fusions, merged projections, SDPA, LM head and log-prob only at scored positions: "
                  "outputs equal to the eager model within fp32 rounding", EXACT)
register_pipeline("exact-cpu", "exact + mkldnn_linear: every matmul on oneDNN weights packed once, the speed "
                  "of inductor-frozen's matmuls with no compile (CPU; run with compiler none)",
                  EXACT + ["mkldnn_linear"])
register_pipeline("fast", "exact + matmuls and attention in bfloat16 (norms, softmax, log-probs stay float32)",
                  EXACT + [{"name": "cast_dtype", "dtype": "bfloat16"}])
register_pipeline("fast-cpu", "fast with the attention in float32 (on CPU the bf16 attention kernel is slower) "
                  "and the matmuls on packed oneDNN weights (mkldnn_linear)",
                  EXACT + [{"name": "cast_dtype", "dtype": "bfloat16", "attention": "float32"}, "mkldnn_linear"])
register_pipeline("int8", "fast-cpu + W8A8 int8 linears (int32 accumulation; compile with inductor)",
                  EXACT + [{"name": "cast_dtype", "dtype": "bfloat16", "attention": "float32"}, "quantize_int8"])
register_pipeline("decode-cpu", "exact without the Triton-kernel fusions (on CPU their reference code costs more "
                  "Python calls than the plain ops in a one-token decode step) + mkldnn_linear: graphopt generate's "
                  "CPU default", [p for p in EXACT if not p.startswith("fuse_")] + ["mkldnn_linear"])
register_pipeline("gpu", "exact + prefix_attention: the block-skipping attention kernel driven by the packed "
                  "layout's ids (CUDA; needs packed, shared_prefix or bucketed scoring)",
                  EXACT + ["prefix_attention"])
