"""prune_structured's activation-aware criteria, budgets and GQA head cuts.

The calibration statistics the pass gathers by interpreting the captured graph equal what forward
hooks / autograd on the eager nn.Module give (1e-5). A pruned graph equals (fp32, atol 1e-5) an eager
model built with the same channels / heads removed, where this file picks them with its own score
computation from the eager statistics. Head layouts 9/3, 6/2 and 8/8; a ratio that removes nothing is
an error naming the layout; the calibration file's errors name the file (and line)."""
import copy
import json

import pytest
import torch
from torch import nn

from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.graph_attrs import attr, set_attr
from graphopt.passes.prune_scores import lowest_across_layers, normalised
from graphopt.passes._calibration import calibration_batches, gather_statistics, read_calibration_text
from graphopt.pipeline import PassContext, PassError, run_passes
from graphopt.scoring.batch import ScoreModule
from tests.test_passes_prune import _check, _setup
from tests.test_tokenizers import hf_tokenizer_json  # noqa: F401  (fixture)

TOL = 1e-5
WORDS = ("the cat sat on a mat while rain fell over quiet hills and rivers ran to the grey sea "
         "every morning birds sang songs of light before the town woke up to work").split()
LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def _write_text(path, n=12):
    """n lines of 3..23 words: sequences of different lengths, so batches are padded."""
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (3 + (5 * k) % 21,), generator=g).tolist())
             for k in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    _write_text(path)
    return path


def _prune(gm, inputs, ctx_tokenizer=None, **options):
    return run_passes(gm, [{"name": "prune_structured", **options}],
                      PassContext(example_inputs=inputs, tokenizer=ctx_tokenizer))


def _eager_stats(model, batches, grads):
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


def _importance(model, criterion, sq, grad):
    """{graph weight name: [out, in] importance}, this test's own formulas."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            key = f"model.layers.{i}.{name}.weight"
            w = layer.get_submodule(name).weight.detach().double()
            out[key] = {"l1": lambda: w.abs(), "wanda": lambda: w.abs() * sq[key].sqrt()[None, :],
                        "taylor": lambda: (w * grad[key].double()).abs()}[criterion]()
    return out


def _cut(model, args, keep_ffn=None, keep_heads=None):
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


# ------------------------------------------------------------------------------ calibration data

def test_read_calibration_text_and_jsonl(tmp_path):
    lines = _write_text(tmp_path / "a.txt", n=5)
    (tmp_path / "a.txt").write_text("\n".join(lines[:2]) + "\n\n  \n" + "\n".join(lines[2:]) + "\n")  # blank lines skipped
    assert read_calibration_text(tmp_path / "a.txt", 128) == lines
    assert read_calibration_text(tmp_path / "a.txt", 3) == lines[:3]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(lines)))
    assert read_calibration_text(tmp_path / "b.jsonl", 4) == lines[:4]


@pytest.mark.parametrize("name,content,msg", [
    ("missing.txt", None, r"calibration file '.*missing.txt' not found \(expected a .txt file"),
    ("empty.txt", "\n \n", r"calibration file '.*empty.txt' is empty"),
    ("rows.jsonl", '{"text": "a b c"}\n{"txt": "d e"}\n', r"rows.jsonl:2: expected an object with a non-empty string "
                                                          r"'text', got \['txt'\]"),
    ("bad.jsonl", '{"text": "a b"}\nnot json\n', r"bad.jsonl:2: not a JSON object"),
])
def test_calibration_file_errors_name_the_file(tmp_path, name, content, msg):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(PassError, match=msg):
        read_calibration_text(tmp_path / name, 8)


def test_calibration_batches_pad_only_after_real_tokens():
    tok = WordHashTokenizer(512)
    texts = ["a b c d e", "f g", "h i j", "k", "l m n"]  # "k": one token, nothing to predict: dropped
    batches = calibration_batches(texts, tok, max_tokens=4, batch_size=2)
    assert [b.inputs[0].shape for b in batches] == [(2, 3), (2, 4)]  # sorted by length; "a b c d e" cut to 4
    ids, pos, mask, idx, tgt = batches[1].inputs
    assert ids[1].tolist() == tok.encode("a b c d e")[:4] and batches[1].valid.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert idx.tolist() == [0, 1, 4, 5, 6] and tgt.tolist() == ids.flatten()[idx + 1].tolist()  # next token, same row
    assert torch.equal(mask[0], torch.ones(4, 4, dtype=torch.bool).tril())
    single = calibration_batches(texts[:1], tok, max_tokens=8)[0]  # one sequence: a padding row makes B = 2
    assert single.inputs[0].shape == (2, 5) and single.valid[1].sum() == 0


# ------------------------------------------------------------------------------ observer statistics

@pytest.mark.parametrize("preset", ["tiny-gqa", "gqa-9-3"])
def test_observer_statistics_equal_eager_hooks(preset, calib_file):
    args, model, inputs, gm = _setup(preset)
    batches = calibration_batches(read_calibration_text(calib_file, 64), WordHashTokenizer(512), 16, batch_size=5)
    targets = {f"model.layers.{i}.{n}.weight" for i in range(args.n_layers) for n in LINEARS}
    flags = [p.requires_grad for p in gm.parameters()]
    stats = gather_statistics(gm, batches, targets, grads=True)
    sq, grad = _eager_stats(model, batches, grads=True)
    assert set(stats.sq_norm) == set(stats.grad) == targets == set(sq)
    assert stats.n_sequences == 12 and stats.n_tokens == sum(int(b.valid.sum()) for b in batches)
    for t in targets:
        torch.testing.assert_close(stats.sq_norm[t], sq[t], atol=TOL, rtol=TOL)
        torch.testing.assert_close(stats.grad[t], grad[t], atol=TOL, rtol=0)
    assert min(float(stats.grad[t].abs().max()) for t in targets) > 10 * TOL  # the gradients are not all ~0
    # the graph's weights are left as they were: no .grad, the same requires_grad
    assert [p.requires_grad for p in gm.parameters()] == flags and all(p.grad is None for p in gm.parameters())


# ------------------------------------------------------------------------------ criteria, end to end

@pytest.mark.parametrize("criterion", ["l1", "wanda", "taylor"])
def test_ffn_criterion_prunes_the_lowest_scores(criterion, calib_file):
    args, model, inputs, gm = _setup("gqa-9-3")
    ratio, tok = 0.25, WordHashTokenizer(512)
    extra = {} if criterion == "l1" else {"calibration": str(calib_file)}
    gm, (rec,) = _prune(gm, inputs, tok, ratio=ratio, what="ffn", criterion=criterion, **extra)
    batches = calibration_batches(read_calibration_text(calib_file, 128), tok, 256)
    imp = _importance(model, criterion, *_eager_stats(model, batches, grads=criterion == "taylor"))
    n = int(ratio * args.hidden_dim)
    keep = {}
    for i in range(args.n_layers):
        f = lambda k: imp[f"model.layers.{i}.feed_forward.{k}.weight"]  # noqa: E731
        score = f("w1").sum(1) + f("w3").sum(1) + f("w2").sum(0)
        keep[i] = sorted(score.argsort()[n:].tolist())
    if criterion != "l1":
        assert rec.stats["calibration_sequences"] == 12 and rec.stats["calibration_tokens"] > 12 * 3
    assert rec.stats["ffn_channels_removed"] == args.n_layers * n
    assert rec.stats["params_removed"] == args.n_layers * n * 3 * args.dim
    assert rec.stats["layers"] == {f"model.layers.{i}": {"ffn_channels": args.hidden_dim - n} for i in range(2)}
    assert gm.get_parameter("model.layers.1.feed_forward.w2.weight").shape == (args.dim, args.hidden_dim - n)
    _check(gm, _cut(model, args, keep_ffn=keep))


def test_criteria_choose_differently(calib_file):
    """The activation-aware scores are not L1 in disguise: on this model they keep other channels."""
    kept = {}
    for criterion in ("l1", "wanda", "taylor"):
        args, model, inputs, gm = _setup("tiny-gqa")
        extra = {} if criterion == "l1" else {"calibration": str(calib_file)}
        gm, _ = _prune(gm, inputs, WordHashTokenizer(512), ratio=0.5, what="ffn", criterion=criterion, **extra)
        kept[criterion] = gm.get_parameter("model.layers.0.feed_forward.w1.weight")
    assert not torch.equal(kept["l1"], kept["wanda"]) and not torch.equal(kept["wanda"], kept["taylor"])


# ------------------------------------------------------------------------------ GQA head cuts

# (preset, ratio, kv groups dropped, query heads dropped per kept group)
CUTS = [("gqa-9-3", 0.34, 1, 0),  # 3 of 9: one whole group (preferred over one query head per group)
        ("gqa-9-3", 0.56, 1, 1),  # 5 of 9: a group, then one query head of each of the other two
        ("gqa-6-2", 0.34, 0, 1),  # 2 of 6: one query head of each group (a group would be 3)
        ("gqa-6-2", 0.5, 1, 0),
        ("mha-8", 0.25, 2, 0)]


@pytest.mark.parametrize("preset,ratio,groups,per_group", CUTS)
@pytest.mark.parametrize("criterion", ["l1", "wanda"])
def test_head_cuts_by_layout(preset, ratio, groups, per_group, criterion, calib_file):
    args, model, inputs, gm = _setup(preset)
    tok, hd, n_kv, n_rep = WordHashTokenizer(512), args.head_dim, args.n_kv_heads, args.n_heads // args.n_kv_heads
    extra = {} if criterion == "l1" else {"calibration": str(calib_file)}
    repeats = [n for n in gm.graph.nodes if n.target is torch.ops.aten.repeat_interleave.self_int]
    gm, (rec,) = _prune(gm, inputs, tok, ratio=ratio, what="heads", criterion=criterion, **extra)
    batches = calibration_batches(read_calibration_text(calib_file, 128), tok, 256)
    imp = _importance(model, criterion, *_eager_stats(model, batches, grads=False))
    keep = {}
    for i in range(args.n_layers):
        f = lambda k: imp[f"model.layers.{i}.attention.{k}.weight"]  # noqa: E731
        q = torch.stack([f("wq")[h * hd:(h + 1) * hd].sum() + f("wo")[:, h * hd:(h + 1) * hd].sum()
                         for h in range(args.n_heads)])
        kv = torch.stack([f("wk")[g * hd:(g + 1) * hd].sum() + f("wv")[g * hd:(g + 1) * hd].sum() for g in range(n_kv)])
        group = torch.stack([kv[g] + q[g * n_rep:(g + 1) * n_rep].sum() for g in range(n_kv)])
        kept_kv = sorted(group.argsort()[groups:].tolist())
        kept_q = [g * n_rep + h for g in kept_kv for h in sorted(q[g * n_rep:(g + 1) * n_rep].argsort()[per_group:].tolist())]
        keep[i] = (kept_kv, kept_q)
    new_kv, new_rep = n_kv - groups, n_rep - per_group
    per_q, per_kv = 2 * args.dim * hd, 2 * args.dim * hd  # wq rows + wo columns; wk + wv rows
    assert rec.stats["kv_groups_removed"] == args.n_layers * groups
    assert rec.stats["query_heads_removed"] == args.n_layers * (args.n_heads - new_kv * new_rep)
    assert rec.stats["params_removed"] == args.n_layers * ((args.n_heads - new_kv * new_rep) * per_q + groups * per_kv)
    assert rec.stats["layers"]["model.layers.1"] == {"query_heads": new_kv * new_rep, "kv_heads": new_kv}
    assert gm.get_parameter("model.layers.0.attention.wq.weight").shape == (new_kv * new_rep * hd, args.dim)
    assert gm.get_parameter("model.layers.0.attention.wk.weight").shape == (new_kv * hd, args.dim)
    assert len(repeats) == 2 * args.n_layers or n_rep == 1  # k and v of each layer
    assert [n.args[1] for n in repeats] == [new_rep] * len(repeats)  # the graph's n_rep literal follows
    rope = [n for n in gm.graph.nodes if n.target is torch.ops.aten.reshape.default and len(n.args[1]) == 5]
    assert sorted({n.args[1][2] for n in rope}) == sorted({new_kv, new_kv * new_rep})
    _check(gm, _cut(model, args, keep_heads=keep))


@pytest.mark.parametrize("preset,ratio,budget,msg", [
    ("gqa-9-3", 0.25, "per_layer", r"heads ratio 0.25 of 9 query heads / 3 kv heads \(3 kv groups of 3 query heads\) "
                                   r"asks for 2 query head\(s\); the smallest cut this layout allows is 3 .*ratio >= 0.334"),
    ("gqa-6-2", 0.2, "per_layer", r"6 query heads / 2 kv heads .* asks for 1 query head\(s\); .* is 2 .*ratio >= 0.334"),
    ("mha-8", 0.1, "per_layer", r"8 query heads / 8 kv heads .* asks for 0 query head\(s\); .* is 1 .*ratio >= 0.125"),
    ("gqa-6-2", 0.2, "global", r"budget global drops whole kv groups: 0.2 x 4 kv groups \(2 layers of 6 query heads / "
                               r"2 kv heads .*rounds to none: use ratio >= 0.25"),
    ("mha-8", 0.004, "per_layer", r"ffn ratio 0.004 of 192 FFN channels \(per_layer\) rounds to none: use ratio >= 0.006"),
])
def test_ratio_that_removes_nothing_names_the_layout(preset, ratio, budget, msg, calib_file):
    args, model, inputs, gm = _setup(preset)
    with pytest.raises(PassError, match=msg):  # found before the calibration is read (wanda, no tokenizer)
        _prune(gm, inputs, ratio=ratio, what="both", budget=budget, criterion="wanda", calibration=str(calib_file))


# ------------------------------------------------------------------------------ global budget

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


def test_tokenizer_option_is_the_same_as_the_context_tokenizer(calib_file, hf_tokenizer_json):  # noqa: F811
    """The runner's YAML names the tokenizer file; graphopt.optimize hands the loaded one: same result."""
    from graphopt.checkpoints.tokenizers import load_tokenizer
    from graphopt.scoring.requests import tok_encode
    args, model, inputs, gm = _setup("tiny-gqa")
    opts = dict(ratio=0.25, what="ffn", criterion="wanda", calibration=str(calib_file))
    by_file, (rec,) = _prune(copy.deepcopy(gm), inputs, tokenizer=str(hf_tokenizer_json.parent), **opts)
    tok = load_tokenizer(hf_tokenizer_json)
    by_ctx, _ = _prune(gm, inputs, tok, **opts)
    for name, p in by_ctx.named_parameters():
        assert torch.equal(p, by_file.get_parameter(name)), name
    lines = read_calibration_text(calib_file, 128)
    assert tok.add_bos_token and rec.stats["calibration_tokens"] == sum(len(tok_encode(tok, t)) for t in lines)


# ------------------------------------------------------------------------------ option errors

def test_calibration_option_errors(tmp_path, calib_file):
    args, model, inputs, gm = _setup("tiny")
    cases = [
        (dict(criterion="wanda"), None, r"criterion wanda reads the model's activations on calibration text: set the "
                                        r"option calibration: PATH"),
        (dict(criterion="taylor", calibration=str(calib_file)), None, r"criterion taylor needs the model's tokenizer"),
        (dict(criterion="wanda", calibration=str(tmp_path / "nope.txt")), WordHashTokenizer(512),
         r"calibration file '.*nope.txt' not found"),
        (dict(criterion="wanda", calibration=str(calib_file), tokenizer=str(tmp_path / "tok.json")), None,
         r"option tokenizer: .*tok.json: tokenizer file not found"),
        (dict(criterion="l1", calibration=str(calib_file)), None, r"criterion l1 reads no calibration data, but "
                                                                  r"calibration is set"),
        (dict(criterion="magnitude"), None, r"'criterion' expects one of 'l1', 'wanda', 'taylor'"),
        (dict(budget="layer"), None, r"'budget' expects one of 'per_layer', 'global'"),
        (dict(criterion="wanda", calibration=str(calib_file), n_calibration=0), None, r"n_calibration' expects a value"),
    ]
    for options, tok, msg in cases:
        with pytest.raises(PassError, match=msg):
            _prune(copy.deepcopy(gm), inputs, tok, ratio=0.25, what="ffn", **options)


def test_taylor_after_fused_logprob_says_what_to_move(calib_file):
    """graphopt's fused head has no backward: the error says to run prune_structured first."""
    args, model, inputs, gm = _setup("tiny")
    with pytest.raises(PassError, match="run prune_structured before the passes that insert graphopt's own ops"):
        run_passes(gm, ["fused_logprob", {"name": "prune_structured", "ratio": 0.25, "criterion": "taylor",
                                          "calibration": str(calib_file)}],
                   PassContext(example_inputs=inputs, tokenizer=WordHashTokenizer(512)))
