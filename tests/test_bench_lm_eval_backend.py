"""benchmarks/lm_eval_backend.py without timing: the three local tasks load in lm-eval with the request
counts the benchmark reports and the shapes of hellaswag / arc_easy / piqa; results and samples files parse;
the comparison marks equal and different accuracies and the table has a line per command."""
import json

import pytest

pytest.importorskip("lm_eval")

from benchmarks.lm_eval_backend import TASKS, commands, compare, markdown, parse_results, task_rows, write_tasks  # noqa: E402

SMALL = {"rt_hellaswag": 3, "rt_arc_easy": 4, "rt_piqa": 5}


def test_task_rows_shapes():
    rows = task_rows(seed=1, rows=SMALL)
    assert {t: len(rows[t]) for t in TASKS} == SMALL
    for arc in rows["rt_arc_easy"]:
        texts = arc["choices"]["text"]
        assert len(set(texts)) == 4 and all(len(t.split()) <= 12 for t in texts)
        assert arc["answerKey"] in "ABCD"
    for piqa in rows["rt_piqa"]:
        assert piqa["label"] in (0, 1) and piqa["sol1"] != piqa["sol2"]
    questions = [r["ctx"] for r in rows["rt_hellaswag"]] + [r["question"] for r in rows["rt_arc_easy"]] + \
        [r["goal"] for r in rows["rt_piqa"]]
    assert len(set(questions)) == len(questions)  # disjoint slices of one draw


def test_tasks_load_in_lm_eval(tmp_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    n_requests = write_tasks(tmp_path, seed=1, rows=SMALL)
    assert n_requests == {"rt_hellaswag": 12, "rt_arc_easy": 16, "rt_piqa": 10}
    tasks = get_task_dict(list(TASKS), TaskManager(include_path=str(tmp_path), include_defaults=False))
    rows = task_rows(seed=1, rows=SMALL)
    for name in TASKS:
        task = tasks[name]
        task.build_all_requests(rank=0, world_size=1)
        assert len(task.instances) == n_requests[name]
        context, continuation = task.instances[0].args
        if name == "rt_arc_easy":
            assert context == f"Question: {rows[name][0]['question']}\nAnswer:"
            assert continuation == " " + rows[name][0]["choices"]["text"][0]
        elif name == "rt_piqa":
            assert context == f"Question: {rows[name][0]['goal']}\nAnswer:" and continuation == " " + rows[name][0]["sol1"]


def _fake_run(out, accs):
    d = out / "model__dir"
    d.mkdir(parents=True)
    (d / "results_2026-12-02.json").write_text(json.dumps(
        {"results": {t: {"acc,none": a, "acc_norm,none": a / 2} for t, a in zip(TASKS, accs)}}))
    for t in TASKS:
        (d / f"samples_{t}_2026-12-02.jsonl").write_text(
            "".join(json.dumps({"doc_id": i, "resps": [[[-1.0 * i - accs[0], False]], [[-2.0, True]]]}) + "\n"
                    for i in range(2)))
    return parse_results(out)


def test_parse_compare_and_table(tmp_path):
    ref = _fake_run(tmp_path / "a", [0.5, 0.25, 0.75])
    assert ref["rt_piqa"]["acc"] == 0.75 and ref["rt_piqa"]["loglik"][(1, 0)] == -1.5
    other = _fake_run(tmp_path / "b", [0.5, 0.3, 0.75])
    records = [{"command": "hf", "wall_s": 10.0, "error": None, "tasks": ref},
               {"command": "graphopt", "wall_s": 4.0, "error": None, "tasks": other},
               {"command": "broken", "wall_s": 1.0, "error": "exit 1"}]
    compare(records)
    assert records[1]["x_hf"] == 2.5 and records[2]["x_hf"] is None
    assert other["rt_hellaswag"]["same_as_hf"] and not other["rt_arc_easy"]["same_as_hf"]
    assert other["rt_hellaswag"]["max_abs_dloglik"] == 0.0
    table = markdown(records, {t: 8 for t in TASKS}).splitlines()
    assert len(table) == 2 + len(records) and "(differs)" in table[3] and "error: exit 1" in table[4]
    with pytest.raises(ValueError, match="no results_"):
        parse_results(tmp_path / "empty")


def test_commands_reference_first(tmp_path):
    labels = [label for label, _ in commands(tmp_path / "m", tmp_path / "t", [8, 1, 32])]
    assert labels[0] == "lm_eval --model hf (fp32, batch size 8)" and len(labels) == 5
    assert sum("graphopt" in label for label in labels) == 2
