"""The prune tests' own oracles: the eager model with the pruned units silenced or cut out, the
calibration statistics from forward hooks / autograd, this suite's importance formulas, and the
calibration text they are computed on. Shared by test_passes_prune, test_prune_criteria,
test_prune_global_budget, test_save_pruned and test_tied_weights."""
import copy

import torch
from torch import nn

from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext
from graphopt.scoring.batch import ScoreModule
from tests._builders import distinct_score_inputs

ATOL = 1e-5  # fp32: a pruned graph against the eager model with the same units removed
WORDS = ("the cat sat on a mat while rain fell over quiet hills and rivers ran to the grey sea "
         "every morning birds sang songs of light before the town woke up to work").split()
LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def prune(gm, inputs, ctx_tokenizer=None, **options):
    """prune_structured with `options` on gm (example inputs `inputs`; the tokenizer for calibration text)."""
    return run_passes(gm, [{"name": "prune_structured", **options}],
                      PassContext(example_inputs=inputs, tokenizer=ctx_tokenizer))


def write_calibration_text(path, n=12):
    """n lines of 3..23 words: sequences of different lengths, so batches are padded."""
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (3 + (5 * k) % 21,), generator=g).tolist())
             for k in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


def silenced(model, args, ffn_ratio=0.0, head_ratio=0.0):
    """A copy of the eager model with the lowest-L1 FFN channels / kv groups zeroed at their output."""
    m = copy.deepcopy(model)
    hd, n_rep = args.head_dim, args.n_heads // args.n_kv_heads
    with torch.no_grad():
        for layer in m.layers:
            ff, at = layer.feed_forward, layer.attention
            n = int(ffn_ratio * args.hidden_dim)
            if n:
                score = ff.w1.weight.abs().sum(1) + ff.w3.weight.abs().sum(1) + ff.w2.weight.abs().sum(0)
                ff.w2.weight[:, score.argsort()[:n]] = 0
            n = int(head_ratio * args.n_kv_heads)
            if n:
                score = torch.stack([at.wq.weight[g * n_rep * hd:(g + 1) * n_rep * hd].abs().sum()
                                     + at.wk.weight[g * hd:(g + 1) * hd].abs().sum()
                                     + at.wv.weight[g * hd:(g + 1) * hd].abs().sum()
                                     + at.wo.weight[:, g * n_rep * hd:(g + 1) * n_rep * hd].abs().sum()
                                     for g in range(args.n_kv_heads)])
                for g in score.argsort()[:n].tolist():
                    at.wo.weight[:, g * n_rep * hd:(g + 1) * n_rep * hd] = 0
    return ScoreModule(m)


def check_pruned(gm, reference, shapes=((2, 8, 5), (3, 11, 9))):
    """gm gives reference's log-probs (fp32, ATOL) on batches of `shapes` (B, T, N)."""
    with torch.no_grad():
        for B, T, N in shapes:  # example shape and another one: the rewritten views stay dynamic in B, T
            inputs = distinct_score_inputs(B, T, N, seed=B + T)
            torch.testing.assert_close(gm(*inputs), reference(*inputs), atol=ATOL, rtol=0)


def eager_stats(model, batches, grads):
    """Per linear (by graph weight name): sum of x^2 over real tokens [in], and d(mean NLL)/dW, from
    forward hooks and autograd on the eager module."""
    model = copy.deepcopy(model)
    sq, hooks, valid = {}, [], {}
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            key = f"model.layers.{i}.{name}.weight"
            lin = layer.get_submodule(name)

            def hook(mod, args, out, key=key):
                x = args[0].detach().double()  # [B, T, in]
                sq[key] = sq.get(key, 0) + (x.square() * valid["now"][..., None]).sum((0, 1))
            hooks.append(lin.register_forward_hook(hook))
    n_scored = sum(b.inputs[3].numel() for b in batches)
    model.requires_grad_(grads)
    for b in batches:
        valid["now"] = b.valid  # [B, T]
        with torch.set_grad_enabled(grads):
            out = ScoreModule(model)(*b.inputs)
            if grads:
                (-out.sum() / n_scored).backward()
    for h in hooks:
        h.remove()
    grad = {f"model.{n}": p.grad for n, p in model.named_parameters() if grads and p.grad is not None}
    return sq, grad


def importance(model, criterion, sq, grad):
    """{graph weight name: [out, in] importance}, this test's own formulas."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            key = f"model.layers.{i}.{name}.weight"
            w = layer.get_submodule(name).weight.detach().double()
            out[key] = {"l1": lambda: w.abs(), "wanda": lambda: w.abs() * sq[key].sqrt()[None, :],
                        "taylor": lambda: (w * grad[key].double()).abs()}[criterion]()
    return out


def cut(model, args, keep_ffn=None, keep_heads=None):
    """The eager model with, per layer, only the FFN channels keep_ffn[i] and (kv heads, query heads)
    keep_heads[i]: its projections sliced, nothing else changed (head counts follow the weights)."""
    m, hd = copy.deepcopy(model), args.head_dim
    rows = lambda heads: (torch.as_tensor(heads)[:, None] * hd + torch.arange(hd)).flatten()  # noqa: E731
    with torch.no_grad():
        for i, layer in enumerate(m.layers):
            ff, at = layer.feed_forward, layer.attention
            if keep_ffn and i in keep_ffn:
                k = torch.as_tensor(keep_ffn[i])
                ff.w1.weight, ff.w3.weight = nn.Parameter(ff.w1.weight[k]), nn.Parameter(ff.w3.weight[k])
                ff.w2.weight = nn.Parameter(ff.w2.weight[:, k])
            if keep_heads and i in keep_heads:
                kv, q = map(rows, keep_heads[i])
                at.wq.weight, at.wo.weight = nn.Parameter(at.wq.weight[q]), nn.Parameter(at.wo.weight[:, q])
                at.wk.weight, at.wv.weight = nn.Parameter(at.wk.weight[kv]), nn.Parameter(at.wv.weight[kv])
    return ScoreModule(m)
