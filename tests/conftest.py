"""Suite-wide settings and the fixtures several test modules share.

Tiny models run fastest (and most repeatably) on one thread on a 2-core machine, and inductor compiles
them fastest without a pool of compile workers. The builders the fixtures use are plain functions in
tests/_builders.py (spawned ranks import those by name); the transformers / GGUF checkpoints are
written by tests/_family_models.py and tests/_gguf_files.py. Fixtures of the session are read-only:
a test that changes what it gets makes its own copy first."""
import copy
import os
import tempfile
import warnings

# inductor compiles tiny graphs in-process: a pool of compile workers (2 on a 2-core machine) costs more to
# start than it saves; set before torch._inductor is imported, and inherited by the tests' subprocesses
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# graphopt's cache folder (compiled code, kept optimised graphs): one of the session's own, never the user's,
# and one per process when the suite runs on several (pytest -n): inherited by the tests' subprocesses
os.environ["GRAPHOPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphopt-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

from graphopt.graph_capture import capture  # noqa: E402
from tests._builders import (choice_batch, distinct_score_inputs, score_inputs, score_module,
                             write_hf_tokenizer_json)  # noqa: E402

torch.set_num_threads(1)

# the example batches a capture is made on: name -> (vocab -> ScoreModule inputs)
EXAMPLES = {
    "score": lambda vocab: score_inputs(2, 8, 5),  # B 2, T 8, N 5 random scored positions
    "distinct": lambda vocab: distinct_score_inputs(2, 8, 5),  # ... distinct scored positions
    "choices": lambda vocab: choice_batch(vocab=vocab)[0],  # the 8-question, 4-ending set
}


@pytest.fixture(scope="session")
def captures():
    """captures(preset, method="export", example="score", dtype=torch.float32) -> (eager ScoreModule
    (random weights, seed 0), the example inputs, a fresh copy of its captured graph). Capturing is
    the slow part, so each key is captured once per session and every call gets a deep copy of the
    graph; the module and the inputs are shared and must not be changed."""
    cache = {}

    def get(preset: str, method: str = "export", example: str = "score", dtype: torch.dtype = torch.float32):
        key = (preset, method, example, dtype)
        if key not in cache:
            module = score_module(preset).to(dtype)
            inputs = EXAMPLES[example](module.model.args.vocab_size)
            if method == "dynamo":
                torch._dynamo.reset()
            cache[key] = module, inputs, capture(module, inputs, method=method)
        module, inputs, gm = cache[key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return module, inputs, copy.deepcopy(gm)
    return get


@pytest.fixture(scope="session")
def choice_captures(captures):
    """choice_captures(preset, method="export") -> (args, eager ScoreModule, inputs, owners, n_questions,
    n_choices, a fresh copy of the captured graph): the session's capture on choice_batch's 8-question,
    4-ending set (tests/_builders.py)."""
    def get(preset: str, method: str = "export"):
        score, inputs, gm = captures(preset, method, example="choices")
        _, owners, nq, nc = choice_batch(vocab=score.model.args.vocab_size)
        return score.model.args, score, inputs, owners, nq, nc, gm
    return get


@pytest.fixture(scope="session")
def prune_setup(captures):
    """prune_setup(preset) -> (args, eager Transformer, example inputs, a fresh copy of the captured graph):
    the session's capture on distinct scored positions, as the prune tests read it."""
    def get(preset: str):
        score, inputs, gm = captures(preset, example="distinct")
        return score.model.args, score.model, inputs, gm
    return get


# ---------------------------------------------------------------- worlds of processes


@pytest.fixture(scope="session")
def failed_launch():
    """(LaunchError, seconds it took) of launch() on a world of 2 whose rank 1 raises while rank 0 waits
    in a collective that can never complete (collective timeout 60 s). Launched once: the launch tests
    and the runner's report of a LaunchError read the same failure."""
    import time

    from graphopt.distributed.launch import LaunchError, launch
    from tests import _dist_workers as W
    t0 = time.monotonic()
    try:
        launch(W.raise_on_rank, 2, args=(1,), timeout_s=120, collective_timeout_s=60)
    except LaunchError as e:
        return e, time.monotonic() - t0
    pytest.fail("launch() returned although rank 1 raised")


@pytest.fixture(scope="session")
def world():
    """world(n) -> a World of n spawned ranks in one gloo group (tests/_world.py), kept up between tests
    so that each does not pay for n fresh interpreters and a new group. One world at a time (a call
    for another size closes the current one): tests of one size sit together in their modules."""
    from tests._world import World
    current = []

    def get(size: int) -> World:
        if current and (current[0].size != size or not current[0].alive):
            current.pop().close()
        if not current:
            current.append(World(size))
        return current[0]
    yield get
    for w in current:
        w.close()


# ---------------------------------------------------------------- text files


@pytest.fixture
def calib_file(tmp_path):
    """A calibration text file of 12 lines of 3..23 words (tests/_prune_oracles.py)."""
    from tests._prune_oracles import write_calibration_text
    path = tmp_path / "calib.txt"
    write_calibration_text(path)
    return path


@pytest.fixture(scope="session")
def hf_tokenizer_json(tmp_path_factory):
    """A byte-level BPE tokenizer.json trained here (tests/_builders.write_hf_tokenizer_json)."""
    pytest.importorskip("tokenizers")
    return write_hf_tokenizer_json(tmp_path_factory.mktemp("hf_tok"))


# ---------------------------------------------------------------- transformers checkpoints of the families


@pytest.fixture(scope="session")
def hf_rope_scaled(tmp_path_factory):
    """{kind: (transformers logits on IDS, directory)} for tiny LlamaForCausalLMs with llama3 / linear
    RoPE scaling."""
    from tests._family_models import COMMON, LINEAR, LLAMA3, save_hf_model, transformers
    out = {}
    for kind, params in (("llama3", LLAMA3), ("linear", LINEAR)):
        d = tmp_path_factory.mktemp(kind)
        cfg = transformers.LlamaConfig(**COMMON, rope_parameters=dict(params))
        out[kind] = save_hf_model(transformers.LlamaForCausalLM, cfg, d, seed=5)[1], d
    return out


@pytest.fixture(scope="session")
def hf_qwen3(tmp_path_factory):
    """(transformers Qwen3ForCausalLM, its logits on IDS, directory): head_dim 24, q/k norms."""
    from tests._family_models import COMMON, save_hf_model, transformers
    d = tmp_path_factory.mktemp("qwen3")
    cfg = transformers.Qwen3Config(**{**COMMON, "rms_norm_eps": 1e-6}, head_dim=24, rope_theta=1e6,
                                   attention_bias=False)
    hf, want = save_hf_model(transformers.Qwen3ForCausalLM, cfg, d, seed=6)
    return hf, want, d


@pytest.fixture(scope="session")
def hf_mistral(tmp_path_factory):
    """(transformers logits on IDS, directory) of a MistralForCausalLM with sliding window 8."""
    from tests._family_models import COMMON, save_hf_model, transformers
    d = tmp_path_factory.mktemp("mistral")
    cfg = transformers.MistralConfig(**COMMON, sliding_window=8)
    return save_hf_model(transformers.MistralForCausalLM, cfg, d, seed=10)[1], d


# ---------------------------------------------------------------- GGUF


@pytest.fixture(scope="session")
def gguf_tokenizer():
    """A byte-level BPE trained here: (tokens, merges, token types, PreTrainedTokenizerFast)."""
    from tests._gguf_files import train_tokenizer
    return train_tokenizer()


@pytest.fixture(scope="session")
def gguf_ids(gguf_tokenizer):
    """[1, 24] token ids of the first two TEXT sentences under gguf_tokenizer."""
    from tests._gguf_files import TEXT
    fast = gguf_tokenizer[3]
    return torch.tensor([fast.encode(" ".join(TEXT[:2]), add_special_tokens=False)[:24]])


# the files that take longest (measured: `pytest --durations`), run first: the two test processes take files
# in collection order, and these met at the end of the alphabet, one process finishing minutes after the other
LONGEST_FIRST = ("test_sharding_tied.py", "test_data_parallel.py", "test_lm_eval_backend.py", "test_compile_cache.py",
                 "test_distributed_tp.py", "test_optimize_blocks.py", "test_distributed_pipeline.py",
                 "test_family_passes.py", "test_torchrun.py", "test_bench_pruning_real.py", "test_runner_signals.py",
                 "test_user_files.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
