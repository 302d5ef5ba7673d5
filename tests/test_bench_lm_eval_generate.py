"""benchmarks/lm_eval_generate.py without timing: the word problems' worked answers hold their arithmetic, the
gsm8k-shaped task loads in lm-eval as generate_until requests with gsm8k's prompt, stop strings and
max_gen_toks, its filters extract the answer from a worked target, and the results / samples files parse
into the table (identical responses counted per doc)."""
import json
import random
import re

import pytest

pytest.importorskip("lm_eval")

from benchmarks._gsm8k_data import word_problems  # noqa: E402
from benchmarks.lm_eval_generate import TASK, markdown, parse_results, write_task  # noqa: E402


def test_worked_answers_hold_their_arithmetic():
    for row in word_problems(random.Random(3), 60):
        work, final = row["answer"].split("\n#### ")
        for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", work):
            assert eval(f"{a} {op} {b}") == int(c), row  # noqa: S307 (digits and one operator)
        assert final == re.findall(r"= (\d+)", work)[-1], row


def test_task_loads_as_gsm8k_shaped_generate_until(tmp_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    write_task(tmp_path, prompts=5, shots=2, max_gen_toks=40, seed=0)
    task = get_task_dict([TASK], TaskManager(include_path=str(tmp_path)))[TASK]
    task.build_all_requests(rank=0, world_size=1)
    assert len(task.instances) == 5
    context, gen_kwargs = task.instances[0].args
    assert context.count("Question: ") == 3 and context.endswith("\nAnswer:")  # two shots + the question
    assert gen_kwargs["until"] == ["Question:", "</s>", "<|im_end|>"] and gen_kwargs["max_gen_toks"] == 40
    inst = task.instances[0]
    target = task.doc_to_target(inst.doc)
    inst.resps = [" " + target]  # a response that repeats the worked answer
    for ensemble in task._filters:
        ensemble.apply([inst])
    answer = target.split("#### ")[1]
    assert inst.filtered_resps == {"strict-match": answer, "flexible-extract": answer}


def _fake_run(out, em, resps):
    d = out / "model__dir"
    d.mkdir(parents=True)
    (d / "results_2026-12-07.json").write_text(json.dumps(
        {"results": {TASK: {"exact_match,strict-match": em, "exact_match,flexible-extract": em + 0.1}}}))
    (d / f"samples_{TASK}_2026-12-07.jsonl").write_text(
        "".join(json.dumps({"doc_id": i, "resps": [[r]]}) + "\n" for i, r in enumerate(resps)))
    return parse_results(out)


def test_parse_and_table_count_identical_responses(tmp_path):
    hf = _fake_run(tmp_path / "a", 0.5, [" 3 + 4 = 7\n#### 7", " 12", ""])
    ours = _fake_run(tmp_path / "b", 0.5, [" 3 + 4 = 7\n#### 7", " 13", ""])
    assert hf["exact_match"] == {"strict-match": 0.5, "flexible-extract": 0.6}
    records = [{"command": "hf", "wall_s": 10.0, "error": None, **hf},
               {"command": "graphopt", "wall_s": 2.5, "error": None, **ours},
               {"command": "broken", "wall_s": 1.0, "error": "exit 1"}]
    table = markdown(records, 3).splitlines()
    assert len(table) == 2 + 3
    assert table[2].endswith("| 3 |") and "| 4.00 |" in table[3] and table[3].endswith("| 2 |")
    assert "error: exit 1" in table[4]
