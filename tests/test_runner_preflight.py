"""Checks made when an experiment loads, before the reference runs (issue #18 items 1 and 3): sharding
that does not divide the model's heads / kv heads / FFN size / vocabulary, pipeline stages beyond the
model's layers and missing CUDA devices fail at load with one message naming the file, the run, the key
and the model's numbers; model sizes come from a checkpoint's config alone (no weight files needed).
A failing rank's LaunchError carries its exception in the first line, which the report lists."""
import json
import textwrap

import pytest
import torch

from graphopt.checkpoints.model_args import read_model_args
from graphopt.checkpoints.word_tokenizer import write_word_hash_tokenizer
from graphopt.runner.execute import run_experiment
from graphopt.runner.config import config_from_dict, load_config
from graphopt.runner.yaml_source import ConfigError

YAML = """\
name: pre
model: {model}
world_size: {world_size}
data: {{limit: 2}}
output_dir: {out}
runs:
  - name: plain
    capture: none
  - name: sharded
    capture: export
    passes: {passes}
"""


def _load(tmp_path, model="tiny", world_size=3, passes="[tensor_parallel]", overrides=()):
    path = tmp_path / "pre.yaml"
    path.write_text(YAML.format(model=model, world_size=world_size, passes=passes, out=tmp_path / "out"))
    return path, lambda: load_config(path, list(overrides))


def _hf_config_dir(tmp_path, **sizes):
    """An HF checkpoint directory holding only config.json: no weight file at all."""
    cfg = {"model_type": "llama", "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 6,
           "num_key_value_heads": 6, "intermediate_size": 96, "vocab_size": 1000}
    cfg.update(sizes)
    d = tmp_path / "hf"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    write_word_hash_tokenizer(d, cfg["vocab_size"])  # a tokenizer is checked at load too
    return d


def test_heads_not_divisible_fail_at_load_naming_file_run_key_and_model(tmp_path):
    path, load = _load(tmp_path)
    with pytest.raises(ConfigError) as e:
        load()
    msg = str(e.value)
    assert msg.startswith(f"{path}: run 'sharded'"), msg
    assert "key 'runs.1.passes'" in msg and "line 11" in msg and "key 'world_size'" in msg and "line 3" in msg, msg
    assert "tensor_parallel: n_heads 4 is not divisible by world_size 3" in msg, msg
    assert "model 'tiny': n_layers 2, n_heads 4, n_kv_heads 4, dim 64, hidden_dim 192, vocab_size 512" in msg, msg
    assert load_config(path, ["world_size=2"]).world_size == 2  # 4 heads over 2 ranks: fine


def test_run_experiment_checks_before_the_reference_runs(tmp_path):
    """A config built without load_config (no preflight yet) is checked by run_experiment itself: nothing
    is measured, not even the reference, and the output folder gets no rows."""
    raw = {"name": "pre", "model": "tiny", "world_size": 3, "data": {"limit": 2}, "output_dir": str(tmp_path / "out"),
           "runs": [{"name": "sharded", "capture": "export", "passes": ["tensor_parallel"]}]}
    cfg = config_from_dict(raw)
    with pytest.raises(ConfigError, match=r"run 'sharded'.*n_heads 4 is not divisible by world_size 3"):
        run_experiment(cfg, progress=False, log=lambda *a: None)
    assert not (tmp_path / "out" / "rows").exists()


def test_kv_heads_hidden_and_vocab_from_a_config_without_weights(tmp_path):
    d = _hf_config_dir(tmp_path, num_key_value_heads=3)  # 6 heads split in 2, 3 kv heads cannot be
    assert read_model_args(d).n_kv_heads == 3
    with pytest.raises(ConfigError, match=r"n_kv_heads 3 is not divisible by world_size 2.*n_kv_heads 3, dim 48"):
        _load(tmp_path, model=d, world_size=2)[1]()
    d = _hf_config_dir(tmp_path, intermediate_size=100)  # FFN hidden size over 3 ranks
    with pytest.raises(ConfigError, match=r"hidden_dim 100 is not divisible by world_size 3.*hidden_dim 100"):
        _load(tmp_path, model=d, world_size=3)[1]()
    d = _hf_config_dir(tmp_path, vocab_size=1001)  # the vocabulary matters only when the head is cut
    assert _load(tmp_path, model=d, world_size=2)[1]().world_size == 2
    with pytest.raises(ConfigError, match=r"vocab_size 1001 is not divisible by world_size 2.*vocab_size 1001"):
        _load(tmp_path, model=d, world_size=2, passes="[{name: tensor_parallel, vocab_parallel: true}]")[1]()


def test_pipeline_split_stages_checked_against_the_models_layers(tmp_path):
    """Item 3: a pass option that depends on the model (n_stages 99 on a 2-layer model) fails at load."""
    with pytest.raises(ConfigError, match=r"run 'sharded'.*pipeline_split: n_stages 99 must be between 1 and "
                                          r"n_layers 2; model 'tiny'"):
        _load(tmp_path, world_size=1, passes="[{name: pipeline_split, n_stages: 99}]")[1]()
    with pytest.raises(ConfigError, match=r"n_stages 0 \(one stage per rank: world_size 3\) must be between 1 "
                                          r"and n_layers 2"):
        _load(tmp_path, world_size=3, passes="[pipeline_split]")[1]()
    assert _load(tmp_path, world_size=1, passes="[{name: pipeline_split, n_stages: 2}]")[1]().world_size == 1
    # over world_size > 1 ranks the worker runs one stage per rank: stages = world_size, no compiler
    with pytest.raises(ConfigError, match=r"run 'sharded'.*one stage per rank: n_stages must be 0 \(= world_size\) "
                                          r"or 2, got 1"):
        _load(tmp_path, world_size=2, passes="[{name: pipeline_split, n_stages: 1}]")[1]()
    with pytest.raises(ConfigError, match=r"compiler must be none, got 'inductor'"):
        _load(tmp_path, world_size=2, passes="[pipeline_split]", overrides=["runs.1.compiler=inductor"])[1]()
    assert _load(tmp_path, world_size=2, passes="[pipeline_split]")[1]().world_size == 2


def test_unreadable_model_config_names_the_model_key(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"key 'model'.*cannot read the model's sizes.*run 'sharded'.*neither "
                                          r"params.json.*nor config.json"):
        _load(tmp_path, model=tmp_path / "empty", world_size=2)[1]()


def test_cuda_world_larger_than_the_devices_fails_at_load(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    path, load = _load(tmp_path, world_size=2, overrides=["device=cuda"])
    with pytest.raises(ConfigError) as e:
        load()
    msg = str(e.value)
    assert "key 'world_size'" in msg, msg
    assert "world_size 2 on cuda needs one CUDA device per rank, this machine has 1" in msg, msg
    assert str(path) in msg


def test_launch_error_first_line_carries_the_cause_and_the_report_lists_it(tmp_path):
    from graphopt.distributed.launch import LaunchError, launch
    from graphopt.runner.report import report
    from graphopt.runner.store import COLUMNS, ResultStore
    from tests import _dist_workers as W

    with pytest.raises(LaunchError) as e:
        launch(W.raise_on_rank, 2, args=(1,), timeout_s=120, collective_timeout_s=60)
    first = str(e.value).splitlines()[0]
    assert first == "launch: rank 1 of 2 failed: ValueError: boom from rank 1", first
    assert "Traceback" in str(e.value)  # the traceback still follows
    store = ResultStore(tmp_path)
    for i, (status, error) in enumerate([("ok", ""), ("error", f"LaunchError: {e.value}")]):  # as worker.main stores it
        row = {c: None for c in COLUMNS}
        row.update(order=i, run=f"r{i}", run_key=f"k{i}", is_reference=i == 0, status=status, error=error,
                   latency_s=1.0, acc=0.5, finished_at=f"t{i}")
        store.write_row(row)
    text = report(tmp_path, plots=False)
    assert "- r1: LaunchError: launch: rank 1 of 2 failed: ValueError: boom from rank 1" in text.splitlines(), text


def test_exception_line_of_chained_and_multiline_tracebacks():
    from graphopt.distributed.launch import exception_line
    text = textwrap.dedent("""\
        Traceback (most recent call last):
          File "a.py", line 1, in <module>
            f()
        KeyError: 'x'

        During handling of the above exception, another exception occurred:

        Traceback (most recent call last):
          File "b.py", line 2, in g
            raise ValueError(msg)
        ValueError: tensor_parallel: n_heads 4 is not divisible by world_size 3
          with an indented detail line
        """)
    assert exception_line(text) == "ValueError: tensor_parallel: n_heads 4 is not divisible by world_size 3"
    wrapped = text.replace("ValueError: tensor", "graphopt.pipeline.PassError: tensor")  # a module's exception
    assert exception_line(wrapped) == "PassError: tensor_parallel: n_heads 4 is not divisible by world_size 3"
    assert exception_line("(rank 2 exited with code -9 without a traceback: killed or crashed)").startswith("(rank 2")


def test_checkpoint_without_tokenizer_refused_at_load(tmp_path):
    """A checkpoint directory with no tokenizer file fails when the YAML loads, naming the folder and the key
    that fixes it; a `tokenizer` key that does not exist is named too."""
    from graphopt.checkpoints import save_meta_checkpoint
    from graphopt.model import ModelArgs, Transformer, init_random_weights
    from graphopt.runner.config import load_config
    from graphopt.runner.yaml_source import ConfigError
    ckpt = tmp_path / "models" / "ckpt"
    save_meta_checkpoint(init_random_weights(Transformer(ModelArgs.from_name("tiny")), seed=0), ckpt)
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"name: x\nmodel: {ckpt}\nruns:\n  - name: a\n")
    with pytest.raises(ConfigError, match=rf"key 'model' .*checkpoint '{ckpt}' has no tokenizer file .*key 'tokenizer'"):
        load_config(cfg)
    cfg.write_text(f"name: x\nmodel: {ckpt}\ntokenizer: {tmp_path / 'nope.json'}\nruns:\n  - name: a\n")
    with pytest.raises(ConfigError, match=r"key 'tokenizer' .*nope.json' does not exist"):
        load_config(cfg)
    cfg.write_text(f"name: x\nmodel: {ckpt}\ntokenizer: word-hash\nruns:\n  - name: a\n")
    assert load_config(cfg).tokenizer == "word-hash"
