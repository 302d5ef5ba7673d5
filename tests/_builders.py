"""What the tests build again and again: random models of the presets (and of odd layouts the presets
lack), their ScoreModules, a model whose logits depend on the row offset, causal example batches, a
multiple-choice set, transformers models with peaked random weights, a tokenizer.json, a checkpoint's
reference log-likelihoods, the sharded runner tests' YAML, result stores for the report, a folder this process cannot write. Plain
functions, so that spawned ranks (tests/_dist_workers.py) import them by name as test modules do; the
fixtures over them (a session's captures, shared checkpoints) are in tests/conftest.py."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.scoring.batch import ScoreModule, sum_by_owner

# layouts the presets lack: odd head counts (9 query heads in 3 kv groups), tied tables, vocab and dims
# divisible by 3
ODD_PRESETS = {
    "gqa-9-3-tied": ModelArgs(dim=72, n_layers=2, n_heads=9, n_kv_heads=3, vocab_size=513, multiple_of=32,
                              max_seq_len=64, tie_embeddings=True),
    "gqa-9-3": ModelArgs(dim=72, n_layers=2, n_heads=9, n_kv_heads=3, vocab_size=512, multiple_of=32,
                         max_seq_len=64, tie_embeddings=True),
    "gqa-6-2": ModelArgs(dim=72, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=64),
    "mha-8": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=8, vocab_size=512, multiple_of=32, max_seq_len=64),
}


def model_args(preset: str | ModelArgs, **changes) -> ModelArgs:
    """A preset's ModelArgs (ModelArgs.from_name or ODD_PRESETS), with `changes` (e.g. n_layers=1)."""
    args = preset if isinstance(preset, ModelArgs) else ODD_PRESETS.get(preset) or ModelArgs.from_name(preset)
    return replace(args, **changes) if changes else args


def random_model(preset: str | ModelArgs, seed: int = 0, **changes) -> Transformer:
    """The preset's Transformer with init_random_weights(seed), in eval mode."""
    return init_random_weights(Transformer(model_args(preset, **changes)), seed=seed).eval()


def score_module(preset: str | ModelArgs, seed: int = 0, **changes) -> ScoreModule:
    """ScoreModule(random_model(...)) in eval mode: what graphopt captures."""
    return ScoreModule(random_model(preset, seed, **changes)).eval()


def _causal(B: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(T).expand(B, T).contiguous()  # [B, T]
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()  # [B, T, T]
    return pos, mask


def score_inputs(B: int, T: int, N: int, vocab: int = 512, seed: int = 0) -> tuple:
    """ScoreModule inputs: random ids [B, T], causal mask, N random scored positions (repeats allowed),
    random targets [N]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    pos, mask = _causal(B, T)
    score_idx = torch.randint(0, B * T, (N,), generator=g)
    targets = torch.randint(0, vocab, (N,), generator=g)
    return ids, pos, mask, score_idx, targets


def distinct_score_inputs(B: int, T: int, N: int, vocab: int = 512, seed: int = 0) -> tuple:
    """As score_inputs, but the N scored positions are distinct (as a real layout's are)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    pos, mask = _causal(B, T)
    idx = torch.randperm(B * T, generator=g)[:N]
    return ids, pos, mask, idx, torch.randint(0, vocab, (N,), generator=g)


def causal_batch(vocab: int, B: int = 2, T: int = 8, seed: int = 1) -> tuple:
    """Random tokens, causal mask, every position but the last of each row scored against the next token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    pos, mask = _causal(B, T)
    score_idx = torch.tensor([b * T + t for b in range(B) for t in range(T - 1)])
    targets = ids.reshape(-1)[score_idx + 1]
    return ids, pos, mask, score_idx, targets


def choice_batch(n_questions: int = 8, n_choices: int = 4, ctx_len: int = 10, cont_len: int = 4, vocab: int = 512,
                 seed: int = 0):
    """A synthetic multiple-choice set, one row per (question, ending): a shared random context, a
    random ending; the last cont_len next-token predictions are scored.
    -> (model inputs, owners [N] (row of each scored token), n_questions, n_choices)."""
    g = torch.Generator().manual_seed(seed)
    rows, B, T = [], n_questions * n_choices, ctx_len + cont_len - 1
    for _ in range(n_questions):
        ctx = torch.randint(0, vocab, (ctx_len,), generator=g)
        for _ in range(n_choices):
            rows.append(torch.cat([ctx, torch.randint(0, vocab, (cont_len,), generator=g)]))
    full = torch.stack(rows)  # [B, T + 1]
    pos, mask = _causal(B, T)
    cols = torch.arange(ctx_len - 1, T)  # positions predicting the continuation
    score_idx = (torch.arange(B)[:, None] * T + cols).flatten()
    targets = full[:, ctx_len:].flatten()
    owners = torch.arange(B).repeat_interleave(cont_len)
    return (full[:, :-1].contiguous(), pos, mask, score_idx, targets), owners, n_questions, n_choices


def chosen_endings(token_logprobs: torch.Tensor, owners: torch.Tensor, n_questions: int, n_choices: int) -> torch.Tensor:
    """The ending each question of a choice_batch picks: per-row sums of the scored tokens' log-probs,
    argmax over the question's rows -> [n_questions]."""
    return sum_by_owner(token_logprobs, owners, n_questions * n_choices).view(n_questions, n_choices).argmax(-1)


def call_nodes(gm, target) -> list:
    """The call_function nodes of gm calling `target`."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


class OffsetDependent(nn.Module):
    """The model's logits plus a term that grows with the row offset (not the RoPE position) on odd
    token ids: the same tokens at another offset of a row score differently."""

    def __init__(self, model):
        super().__init__()
        self.model, self.args = model, model.args

    def forward(self, input_ids, positions, mask):
        logits = self.model(input_ids, positions, mask)  # [B, T, V]
        T, V = logits.shape[1:]
        return logits + 1e-3 * torch.arange(T)[None, :, None] * (torch.arange(V) % 2)[None, None, :]


def randomize_hf(model, seed: int):
    """A transformers model's weights large enough that attention is peaked (a wrong q/k row order
    changes the logits a lot), norms distinct from 1 (a swapped norm shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model.eval()


def store_rows(root, specs: list[dict], tolerance=None):
    """A ResultStore in `root` with one result row per spec (missing columns None) and experiment.json's
    tolerance: what `graphopt report` reads."""
    from graphopt.runner.store import COLUMNS, ResultStore
    store = ResultStore(root)
    for i, spec in enumerate(specs):
        row = {c: None for c in COLUMNS}
        row.update(order=i, run_key=f"k{i}", is_reference=i == 0, status="ok", error="", finished_at=f"t{i}")
        row.update(spec)
        store.write_row(row)
    tol = tolerance or {"acc_points": 0.5, "max_abs_dloglik": 0.5}
    (root / "experiment.json").write_text(json.dumps({"tolerance": tol}))
    return store


def four_run_store(tmp_path):
    """store_rows of a reference, a fast run within tolerance, a bf16 run outside it and a failed run."""
    specs = [("reference", "ok", 2.0, 0.50, 0.0, True), ("fast", "ok", 0.5, 0.50, 1e-5, True),
             ("bf16", "ok", 0.25, 0.40, 0.3, False), ("broken", "error", None, None, None, False)]
    return store_rows(tmp_path, [
        dict(run=name, status=status, latency_s=lat, acc=acc, acc_norm=acc, max_abs_dloglik=d, within_tolerance=tol,
             passes="a + b" if i else "-", n_params=172352,
             error="PassError: no | such pass\ntraceback" if status == "error" else "")
        for i, (name, status, lat, acc, d, tol) in enumerate(specs)])


# English lines the file tokenizers are trained on
TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Then, the man writes over the snow covering the window of a car.",
    "The woman is now blow drying the dog. The dog is then shown in a bath.",
    "Two women are standing in a kitchen, talking about the recipe they are making.",
    "She puts the cake in the oven and waits for it to bake while reading a book.",
] * 4


def write_hf_tokenizer_json(folder):
    """folder/tokenizer.json: a byte-level BPE (vocab 300; <unk> <bos> <eos> = 0 1 2) trained on
    TOKENIZER_TEXT, with a post-processor that adds BOS as Llama-3's does (encode() must not apply it)."""
    import tokenizers as tk
    tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<bos>", "<eos>"],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TOKENIZER_TEXT, trainer)
    tok.post_processor = tk.processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def score_checkpoint(ckpt: str, limit: int, strategy: str = "shared_prefix"):
    """(requests' batches, n_requests, log-likelihoods [n] float64) of a checkpoint loaded whole in this
    process, the eager model scoring the synthetic HellaSwag set's first `limit` rows."""
    from graphopt.checkpoints import load_model
    from graphopt.data import load_hellaswag
    from graphopt.scoring.score_loop import score_requests
    from graphopt.scoring.requests import build_requests
    from graphopt.scoring.strategies import build_batches
    model, tokenizer = load_model(ckpt, tokenizer="word-hash")  # random weights, no tokenizer file
    requests = build_requests(load_hellaswag(None, limit=limit), tokenizer)
    batches = build_batches(requests, strategy)
    with torch.no_grad():
        return batches, len(requests), score_requests(ScoreModule(model).eval(), batches, len(requests), False)


def sharded_sweep_yaml(name: str, model, out, world_size: int, limit: int, runs: str, data_parallel: int | None = None) -> str:
    """An experiment YAML for the sharded runner tests: eager per-pair reference, shared-prefix scoring,
    no warm-up, one timed pass; `runs` is the YAML text of its runs list (indented items)."""
    dp = "" if data_parallel is None else f"data_parallel: {data_parallel}\n"
    return (f"name: {name}\nmodel: {model}\nworld_size: {world_size}\n{dp}data: {{limit: {limit}}}\nwarmup: 0\n"
            f"repeats: 1\noutput_dir: {out}\nreference: {{capture: none, scoring: {{strategy: per_pair}}}}\n"
            f"scoring: {{strategy: shared_prefix}}\nruns:\n{runs}")


def unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot write: chmod 0555 (ignored by root: then /sys, read-only to it)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    for candidate in (d, Path("/sys/fs")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    raise AssertionError("no folder on this machine refuses writes to this process; cannot test the refusal")
