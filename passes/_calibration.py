"""Calibration statistics for activation-aware pruning, gathered by running the captured graph itself
(an FX graph has no forward hooks): an Interpreter that, at every linear reading one of the wanted
weights, adds up the squares of the linear's input per input channel, and (for gradients) hands out
those weights as leaf tensors so one backward pass gives dL/dW.

The calibration set is text the user chooses: a .txt file (one sequence per non-blank line) or a
.jsonl file (one {"text": ...} object per line); the first n sequences are used. Sequences are
encoded as the scoring code encodes text (tok_encode: the tokenizer's own BOS default), cut to
max_tokens, sorted by length and right-padded into batches; padding never reaches a statistic.
The loss is the mean next-token negative log-likelihood over every real token but the last of each
sequence: ScoreModule's output at those positions, so the graph needs no other entry point.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.fx import GraphModule, Interpreter

from graphopt.checkpoints.encode import tok_encode
from graphopt.graph_attrs import attr
from graphopt.pipeline import PassError
from ._ops import linear_parts

SCORE_INPUTS = ("input_ids", "positions", "mask", "score_idx", "targets")


def read_calibration_text(path: str, n: int) -> list[str]:
    """The first n sequences of a .txt (one per non-blank line) or .jsonl ({"text": ...} rows) file."""
    p = Path(path)
    expected = 'a .txt file with one sequence per line, or a .jsonl file of {"text": ...} rows'
    if not p.is_file():
        raise PassError(f"calibration file {str(p)!r} not found (expected {expected})")
    texts: list[str] = []
    with p.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if len(texts) == n:
                break
            if not line.strip():
                continue
            if p.suffix != ".jsonl":
                texts.append(line.rstrip("\r\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PassError(f"{p}:{line_no}: not a JSON object ({e.msg}); expected {{\"text\": ...}}") from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise PassError(f"{p}:{line_no}: expected an object with a non-empty string 'text', got {keys}")
            texts.append(row["text"])
    if not texts:
        raise PassError(f"calibration file {str(p)!r} is empty (no non-blank lines; expected {expected})")
    return texts


@dataclass
class CalibrationBatch:
    inputs: tuple  # ScoreModule's: input_ids [B, T], positions [B, T], mask [B, T, T], score_idx [N], targets [N]
    valid: Tensor  # [B, T] bool: real tokens (rows are right-padded)


def calibration_batches(texts: list[str], tokenizer, max_tokens: int, batch_size: int = 8,
                        device="cpu") -> list[CalibrationBatch]:
    """Encoded, length-sorted, right-padded batches. A causal mask is enough: the padding sits after
    every real token of its row, so no real token attends to it."""
    seqs = [ids[:max_tokens] for ids in (tok_encode(tokenizer, t) for t in texts)]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len)  # one token has no next token to predict
    if not seqs:
        raise PassError("no calibration sequence has 2 tokens or more")
    batches = []
    for start in range(0, len(seqs), batch_size):
        rows = seqs[start:start + batch_size]
        if len(rows) == 1:  # a captured graph's batch dim is at least 2: add a padding row
            rows = rows + [[]]
        B, T = len(rows), max(len(r) for r in rows)
        ids = torch.zeros(B, T, dtype=torch.long)
        valid = torch.zeros(B, T, dtype=torch.bool)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            valid[b, :len(r)] = True
        scored = valid.clone()
        scored[:, :-1] &= valid[:, 1:]  # a position is scored when the next one is a real token
        scored[:, -1] = False
        score_idx = scored.flatten().nonzero().squeeze(1)  # [N]
        targets = ids.flatten()[score_idx + 1]  # [N]: the next token of the same row
        positions = torch.arange(T).expand(B, T).contiguous()
        mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
        inputs = tuple(t.to(device) for t in (ids, positions, mask, score_idx, targets))
        batches.append(CalibrationBatch(inputs, valid.to(device)))
    return batches


@dataclass
class CalibrationStats:
    sq_norm: dict[str, Tensor] = field(default_factory=dict)  # weight target -> [in] float64: sum_tokens x_j^2
    grad: dict[str, Tensor] = field(default_factory=dict)  # weight target -> [out, in] float32: d(mean NLL)/dW
    n_sequences: int = 0
    n_tokens: int = 0  # real tokens seen by the observers
    n_scored: int = 0  # tokens in the loss


class _Observer(Interpreter):
    """Runs the graph; adds x^2 (real tokens only) at the linears reading `targets`; reads `leaves`
    instead of the graph's weights (they carry the gradient)."""

    def __init__(self, gm: GraphModule, targets: set[str], leaves: dict[str, Tensor], stats: CalibrationStats):
        super().__init__(gm)
        self.watch = {}
        for node in gm.graph.nodes:
            parts = linear_parts(gm, node)
            if parts is not None and parts[1] in targets:
                self.watch[node] = parts[1]
        self.leaves, self.stats, self.valid = leaves, stats, None

    def get_attr(self, target, args, kwargs):
        if target in self.leaves:
            return self.leaves[target]
        value = super().get_attr(target, args, kwargs)
        return value.detach() if isinstance(value, Tensor) else value  # no gradient into the other weights

    def run_node(self, node):
        target = self.watch.get(node)
        if target is not None:
            x = self.env[node.args[0]].detach()  # [B, T, in]
            if x.shape[:2] != self.valid.shape:
                raise PassError(f"the input of the linear reading {target} is {list(x.shape)}, expected "
                                f"[B, T, in] with [B, T] = {list(self.valid.shape)}")
            sq = (x.double().square() * self.valid[..., None]).sum((0, 1))  # [in]
            total = self.stats.sq_norm.get(target)
            self.stats.sq_norm[target] = sq if total is None else total + sq
        return super().run_node(node)


def check_score_graph(gm: GraphModule) -> None:
    """The graph takes ScoreModule's inputs by name (an export capture); a dynamo graph does not."""
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if tuple(names[:len(SCORE_INPUTS)]) != SCORE_INPUTS:
        raise PassError(f"calibration runs the graph on ScoreModule's inputs {list(SCORE_INPUTS)}, but its "
                        f"placeholders are {names[:8]}: capture it with export")


def gather_statistics(gm: GraphModule, batches: list[CalibrationBatch], targets: set[str],
                      grads: bool = False) -> CalibrationStats:
    """Input squares per channel at the linears reading `targets` (and dL/dW of those weights when
    grads) over the calibration batches, with the weights as they are (no other change to gm)."""
    check_score_graph(gm)
    stats = CalibrationStats()
    for t in targets:
        if attr(gm, t).device.type == "meta":
            raise PassError(f"calibration needs the weights, and {t} is on the meta device (captured weightless)")
    leaves = {t: attr(gm, t).detach().requires_grad_(True) for t in targets} if grads else {}
    observer = _Observer(gm, set(targets), leaves, stats)
    n_scored = sum(int(b.inputs[3].numel()) for b in batches)
    for batch in batches:
        observer.valid = batch.valid
        with torch.set_grad_enabled(grads):
            out = observer.run(*batch.inputs)
            logprobs = out[0] if isinstance(out, (tuple, list)) else out  # [N] (greedy graphs: and [N] bool)
            if grads:
                loss = -logprobs.float().sum() / n_scored  # mean NLL over every calibration token
                try:
                    loss.backward()
                except RuntimeError as e:
                    raise PassError(f"no gradient through the graph ({e}); run prune_structured before the passes "
                                    f"that insert graphopt's own ops (e.g. fused_logprob)") from e
                for t, leaf in leaves.items():
                    if leaf.grad is None:
                        raise PassError(f"the loss does not depend on {t}")
                    g = leaf.grad.float()
                    stats.grad[t] = g if t not in stats.grad else stats.grad[t] + g
                    leaf.grad = None
        stats.n_sequences += int(batch.valid.any(1).sum())
        stats.n_tokens += int(batch.valid.sum())
    stats.n_scored = n_scored
    return stats
