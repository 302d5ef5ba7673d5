"""fused_logprob: log_softmax + gather at the targets -> one graphopt.logprob node; and, when the
logits come straight from the LM-head linear (i.e. after prune_lm_head), linear + logprob ->
graphopt.linear_logprob(hidden, weight, target), so the [N, V] logits are never materialised.

Before:  logits [N, V] -> [x.float()] -> log_softmax(d) -> gather(d, targets.unsqueeze(d)) -> squeeze(d)
         (d = -1 or 1, spelled the same at each op)
After:   graphopt.logprob(logits, targets) [N] float32   (accumulates in float32 itself, so the cast goes)
         graphopt.linear_logprob(hidden [N, D], weight [V, D], targets) when logits = linear(hidden, weight)
With ScoreModule(greedy=True) the logits also feed argmax(-1) == targets (lm-eval's is_greedy); then
linear + log-prob + argmax -> graphopt.linear_logprob_greedy(hidden, weight, targets) -> (log-prob, greedy),
one pass over the vocabulary for both.
The greedy next token (generation: only the argmax is needed, no log-probs at all):
    linear(hidden, weight) [N, V] -> [.float()] -> argmax(-1)  ->  graphopt.linear_argmax(hidden, weight) [N] int64
(chunked over the vocabulary: the [N, V] logits never exist at once). It runs after the scoring forms,
so a head whose logits also feed a log-prob is left to them.
"""
import torch
import torch.nn.functional as F

from graphopt.pipeline import PassOption, PassResult, register_pass
from ._ops import val
from ._patterns import replace_all

DIM = -1  # marker: the only int literal of the patterns, then matching any (checked in _ok)
LOW, INDEX = torch.bfloat16, ((4,), torch.int64)  # traced in bfloat16: x.float() a real cast (float32's matches too)


def _logprob(x, targets, dim):  # ScoreModule's tail
    return torch.log_softmax(x, dim=dim).gather(dim, targets.unsqueeze(dim)).squeeze(dim)


def _pattern_1(logits, targets, dim):
    return _logprob(logits.float(), targets, dim)


def _pattern_2(logits, targets, dim):
    return _logprob(logits, targets, dim)


def _replacement_1(logits, targets, dim):
    return torch.ops.graphopt.logprob(logits, targets)


def _pattern_3(hidden, weight, targets, dim):
    return _pattern_1(F.linear(hidden, weight), targets, dim)


def _pattern_4(hidden, weight, targets, dim):
    return _pattern_2(F.linear(hidden, weight), targets, dim)


def _replacement_3(hidden, weight, targets, dim):
    return torch.ops.graphopt.linear_logprob(hidden, weight, targets)


def _pattern_5(hidden, weight, targets):  # after the plain fusion has made the log-prob graphopt.logprob
    logits = F.linear(hidden, weight)
    return torch.ops.graphopt.logprob(logits, targets), logits.float().argmax(-1) == targets


def _replacement_5(hidden, weight, targets):
    out = torch.ops.graphopt.linear_logprob_greedy(hidden, weight, targets)
    return out[0], out[1]


def _pattern_6(hidden, weight):  # the greedy next token (graphopt.generation)
    return F.linear(hidden, weight).float().argmax(-1)


def _pattern_7(hidden, weight):
    return F.linear(hidden, weight).argmax(-1)


def _replacement_6(hidden, weight):
    return torch.ops.graphopt.linear_argmax(hidden, weight)


def _ok(m, match) -> bool:
    x = val(m["hidden"] if "hidden" in m else m["logits"])  # [N, D] / [N, V]
    return m.get("dim", -1) in (-1, 1) and x is not None and x.dim() == 2 and x.dtype in (torch.float32, torch.float16, LOW)


@register_pass("fused_logprob", "log_softmax + gather -> graphopt.logprob; with the LM head right before it "
               "(after prune_lm_head) linear + log-prob -> graphopt.linear_logprob (no [N, V] logits); linear + argmax "
               "(the greedy next token) -> graphopt.linear_argmax",
               options={"with_linear": PassOption(bool, True, "also fuse the LM-head linear into the log-prob "
                                                  "(graphopt.linear_logprob) when it feeds the log-softmax directly")},
               blockwise=True)
def fused_logprob(gm, ctx):
    linear_fused = 0  # first: the plain patterns would match with logits = the linear
    if ctx.options.get("with_linear", True):
        head = (((4, 8), LOW), ((16, 8), LOW), INDEX, DIM)  # hidden [N, D], weight [V, D]
        linear_fused = sum(replace_all(gm, p, _replacement_3, head, _ok) for p in (_pattern_3, _pattern_4))
    plain = (((4, 16), LOW), INDEX, DIM)  # logits [N, V]
    matches = linear_fused + sum(replace_all(gm, p, _replacement_1, plain, _ok) for p in (_pattern_1, _pattern_2))
    if ctx.options.get("with_linear", True):
        greedy = replace_all(gm, _pattern_5, _replacement_5, head[:3], _ok)
        matches, linear_fused = matches + greedy, linear_fused + greedy
        argmax = sum(replace_all(gm, p, _replacement_6, head[:2], _ok) for p in (_pattern_6, _pattern_7))
        matches, linear_fused = matches + argmax, linear_fused + argmax
    return PassResult(gm, matches > 0, {"matches": matches, "linear_fused": linear_fused})
