"""`graphopt lm-eval --model graphopt` refuses what it cannot use in one line (exit 2), before any work, as
`graphopt eval` does: checkpoints graphopt cannot load, a compiler it does not know; and it takes the
--model_args keys that lm-eval's own flags also pass (device, batch_size): the --model_args key wins."""
from __future__ import annotations

import json
import logging
import sys

import pytest

pytest.importorskip("lm_eval")

from graphopt.checkpoints import load_model, save_meta_checkpoint  # noqa: E402
from graphopt.checkpoints.word_tokenizer import write_word_hash_tokenizer  # noqa: E402
from graphopt.cli import main  # noqa: E402
from graphopt.errors import UserError  # noqa: E402
from graphopt.harness.lm import GraphoptLM  # noqa: E402


@pytest.fixture
def local_tasks_only(monkeypatch, tmp_path):
    """A local multiple-choice task, and lm-eval's TaskManager limited to --include_path: indexing lm-eval's
    ~15000 built-in task files takes longer than the whole test (the model is refused before any task loads).
    """
    from lm_eval.tasks import TaskManager

    index = TaskManager.__init__

    def local_only(self, *args, include_defaults=True, **kwargs):
        index(self, *args, include_defaults=False, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", local_only)
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    data = task_dir / "mc.jsonl"
    data.write_text(json.dumps({"q": "a dog", "choices": ["runs", "sits"], "label": 0}) + "\n")
    (task_dir / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {json.dumps(str(data))}\nvalidation_split: validation\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: label\ndoc_to_choice: choices\n")
    return task_dir


def _logs_to_this_stderr():
    """Log handlers made in an earlier test (lm-eval's, datasets') hold that test's closed stderr."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # (setStream would flush the closed stream first)


def _meta_checkpoint(d, tokenizer: bool = True):
    save_meta_checkpoint(load_model("tiny")[0], d)
    if tokenizer:
        write_word_hash_tokenizer(d, 512)
    return d


def _truncated(d):
    _meta_checkpoint(d)
    shard = d / "consolidated.00.pth"
    shard.write_bytes(shard.read_bytes()[:1000])
    return d


def _not_llama(d):
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 512}))
    write_word_hash_tokenizer(d, 512)
    return d


def _bad_gguf(d):
    d.mkdir()
    (d / "m.gguf").write_bytes(b"GGUF" + bytes(64))
    return d / "m.gguf"


BAD_CHECKPOINTS = {  # how to make it -> what the one line says
    "missing": (lambda d: d / "nowhere", "is neither a model preset nor an existing directory"),
    "truncated": (_truncated, "consolidated.00.pth: not a readable torch checkpoint"),
    "no tokenizer": (lambda d: _meta_checkpoint(d, tokenizer=False), "no tokenizer file"),
    "unsupported family": (_not_llama, "model_type 'gpt2'"),
    "bad gguf": (_bad_gguf, "m.gguf: not a readable GGUF file"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_checkpoint_errors_are_one_line_with_exit_2(case, local_tasks_only, tmp_path, capsys):
    make, says = BAD_CHECKPOINTS[case]
    path = make(tmp_path / "ckpt")
    _logs_to_this_stderr()
    code = main(["lm-eval", "--model", "graphopt", "--model_args", f"pretrained={path}", "--tasks", "tiny_mc",
                 "--include_path", str(local_tasks_only)])
    err = capsys.readouterr().err
    assert code == 2, err
    mine = [line for line in err.splitlines() if line.startswith("graphopt lm-eval: error:")]
    assert len(mine) == 1 and says in mine[0] and "Traceback" not in err


def test_unknown_compiler_is_refused_with_the_other_keys():
    """Before the model loads (the checkpoint path does not exist: a load would fail on it instead)."""
    with pytest.raises(UserError, match=r"--model_args compiler='nonsense': expected one of none, inductor, "
                                        r"inductor-frozen, eager-fx"):
        GraphoptLM(pretrained="/nonexistent", compiler="nonsense")
    with pytest.raises(UserError, match="compiler='nonsense'"):  # with pipeline=auto as well as a named one
        GraphoptLM(pretrained="/nonexistent", pipeline="exact", compiler="nonsense")


def test_model_args_device_and_batch_size_win_over_lm_eval_flags():
    """lm-eval passes --device (default cuda:0) and --batch_size next to --model_args; a key given in both
    was a TypeError ("got multiple values for keyword argument 'device'"); the --model_args key wins."""
    flags = {"device": "cuda:0", "batch_size": 4, "max_batch_size": None}
    lm = GraphoptLM.create_from_arg_string("pretrained=tiny,device=cpu,batch_size=8,progress=False", flags)
    assert lm.config.device == "cpu" and lm.config.batch_size == 8
    lm = GraphoptLM.create_from_arg_obj({"pretrained": "tiny", "device": "cpu", "progress": False}, flags)
    assert lm.config.device == "cpu" and lm.config.batch_size == 4  # the flag where model_args has no key


def test_registering_graphopt_keeps_lm_eval_s_own_models():
    """lm-eval binds its own names (`hf`, ...) only when it finds its registry empty: registering `graphopt`
    first hid them from the rest of the process ("no model for this name found ... graphopt"). In a fresh
    interpreter, so that no earlier test has filled the registry."""
    import subprocess

    code = ("from graphopt.harness import register; register(); register()\n"
            "from lm_eval.api.registry import get_model\n"
            "print(get_model('graphopt').__name__, get_model('hf').__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["GraphoptLM", "HFLM"]
