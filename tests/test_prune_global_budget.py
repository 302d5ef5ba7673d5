"""prune_structured's global budget: one budget spent on the lowest scores across layers (wanda, raw scores:
the graph equals an eager model cut where this file's own scores say), lowest_across_layers with mean
normalisation and per-layer caps, a layer scaled 100x, and a budget over the caps as an error. Helpers
and the calibration fixture: tests/test_prune_criteria.py."""
import copy

import pytest
import torch

from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.graph_attrs import attr, set_attr
from graphopt.passes._calibration import calibration_batches, read_calibration_text
from graphopt.passes._prune_scores import lowest_across_layers, normalised
from graphopt.pipeline import PassError
from tests.test_passes_prune import _check, _setup
from tests.test_prune_criteria import _cut, _eager_stats, _importance, _prune, calib_file  # noqa: F401 (fixture)


def test_global_budget_spends_one_budget_on_the_lowest_scores(calib_file):
    args, model, inputs, gm = _setup("gqa-9-3")
    tok, ratio = WordHashTokenizer(512), 0.3
    gm, (rec,) = _prune(gm, inputs, tok, ratio=ratio, what="both", budget="global", criterion="wanda",
                        calibration=str(calib_file), normalize="none", max_layer_ratio=1.0)  # raw scores, no cap
    batches = calibration_batches(read_calibration_text(calib_file, 128), tok, 256)
    imp = _importance(model, "wanda", *_eager_stats(model, batches, grads=False))
    hd, L = args.head_dim, args.n_layers
    ffn = [(imp[f"model.layers.{i}.feed_forward.w1.weight"].sum(1) + imp[f"model.layers.{i}.feed_forward.w3.weight"].sum(1)
            + imp[f"model.layers.{i}.feed_forward.w2.weight"].sum(0)) for i in range(L)]
    n_ffn = int(ratio * L * args.hidden_dim)
    cutoff = torch.cat(ffn).sort().values[n_ffn - 1]
    keep_ffn = {i: (s > cutoff).nonzero().squeeze(1).tolist() for i, s in enumerate(ffn)}
    groups = []
    for i in range(L):
        f = lambda k: imp[f"model.layers.{i}.attention.{k}.weight"]  # noqa: E731
        groups.append(torch.stack([f("wq")[g * 3 * hd:(g + 1) * 3 * hd].sum() + f("wo")[:, g * 3 * hd:(g + 1) * 3 * hd].sum()
                                   + f("wk")[g * hd:(g + 1) * hd].sum() + f("wv")[g * hd:(g + 1) * hd].sum()
                                   for g in range(3)]))
    n_groups = int(ratio * L * 3)  # 1
    g_cut = torch.cat(groups).sort().values[n_groups - 1]
    keep_heads = {}
    for i, s in enumerate(groups):
        kv = (s > g_cut).nonzero().squeeze(1).tolist()
        keep_heads[i] = (kv, [g * 3 + h for g in kv for h in range(3)])
    per_layer = {f"model.layers.{i}": {"ffn_channels": len(keep_ffn[i]), "query_heads": len(keep_heads[i][1]),
                                       "kv_heads": len(keep_heads[i][0])} for i in range(L)}
    assert rec.stats["layers"] == per_layer
    assert sum(len(k) for k in keep_ffn.values()) == L * args.hidden_dim - n_ffn
    assert len({len(k) for k in keep_ffn.values()}) == 2  # the budget is not split evenly: the scores decide
    assert rec.stats["kv_groups_removed"] == n_groups and rec.stats["ffn_channels_removed"] == n_ffn
    _check(gm, _cut(model, args, keep_ffn=keep_ffn, keep_heads=keep_heads))


def test_lowest_across_layers_normalised_spreads_a_100x_layer_and_keeps_the_cap():
    """Layer 1's scores are layer 0's times 100: raw ranking takes the whole budget from layer 0; divided
    by each layer's mean the two rank alike and share it. Exactly n go; never more than a layer's cap."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, generator=g, dtype=torch.float64) + 0.5
    scores = [base, torch.rand(40, generator=g, dtype=torch.float64).add(0.5) * 100]
    raw = lowest_across_layers(normalised(scores, "none"), 30)
    assert raw == [30, 0]
    spread = lowest_across_layers(normalised(scores, "mean"), 30)
    assert sum(spread) == 30 and min(spread) >= 10, spread
    # a layer with a block of very weak units gives them up first, up to its cap, the rest comes elsewhere
    weak = torch.cat([torch.full((20,), 0.01, dtype=torch.float64), base[:20]])
    capped = lowest_across_layers(normalised([weak, scores[1]], "mean"), 30, caps=[20, 20])
    assert capped == [20, 10]
    assert lowest_across_layers(normalised([weak, scores[1]], "mean"), 30, caps=[15, 20]) == [15, 15]


def test_global_budget_normalised_on_a_layer_scaled_100x():
    """The pass on a model whose layer-1 FFN weights are x10 (its L1 scores x10): with normalize mean
    both layers lose channels, exactly the budget, none above max_layer_ratio, and the graph equals the
    eager model cut to the channels this test picks from its own normalised scores; raw (none) cuts
    only layer 0, as far as the cap allows."""
    args, model, inputs, gm = _setup("gqa-9-3")
    model = copy.deepcopy(model)
    with torch.no_grad():
        for w in (model.layers[1].feed_forward.w1, model.layers[1].feed_forward.w3, model.layers[1].feed_forward.w2):
            w.weight.mul_(10)  # w1, w3 and w2 x10: the channel's L1 sum x10, its output x1000
    for key in ("w1", "w2", "w3"):
        name = f"model.layers.1.feed_forward.{key}.weight"
        set_attr(gm, name, attr(gm, name) * 10)
    H, ratio = args.hidden_dim, 0.3
    n = int(ratio * 2 * H)
    raw, (rec_raw,) = _prune(copy.deepcopy(gm), inputs, ratio=ratio, budget="global", normalize="none",
                             max_layer_ratio=0.5)
    assert [rec_raw.stats["layers"][f"model.layers.{i}"]["ffn_channels"] for i in range(2)] == [H - H // 2, H - (n - H // 2)]
    pruned, (rec,) = _prune(gm, inputs, ratio=ratio, budget="global", max_layer_ratio=0.5)
    kept = [rec.stats["layers"][f"model.layers.{i}"]["ffn_channels"] for i in range(2)]
    assert rec.stats["ffn_channels_removed"] == n == 2 * H - sum(kept)
    assert all(H - k <= H // 2 for k in kept) and all(k < H for k in kept), kept
    ff = [model.layers[i].feed_forward for i in range(2)]
    l1 = [f.w1.weight.abs().sum(1).double() + f.w3.weight.abs().sum(1) + f.w2.weight.abs().sum(0) for f in ff]
    norm = [s / s.mean() for s in l1]
    cutoff = torch.cat(norm).sort().values[n - 1]
    keep_ffn = {i: (s > cutoff).nonzero().squeeze(1).tolist() for i, s in enumerate(norm)}
    assert [len(k) for k in keep_ffn.values()] == kept
    _check(pruned, _cut(model, args, keep_ffn=keep_ffn))


@pytest.mark.parametrize("what,ratio,msg", [
    ("ffn", 0.6, r"budget global asks for \d+ FFN channels but max_layer_ratio 0.5 lets the 2 layers give up at most"),
    ("heads", 0.5, r"budget global asks for 3 kv groups but max_layer_ratio 0.5 lets the 2 layers give up at most 2")])
def test_global_budget_over_the_layer_caps_is_an_error(what, ratio, msg):
    args, model, inputs, gm = _setup("gqa-9-3")
    with pytest.raises(PassError, match=msg):
        _prune(gm, inputs, ratio=ratio, what=what, budget="global")
