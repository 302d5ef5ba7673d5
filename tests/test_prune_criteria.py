"""prune_structured's activation-aware criteria, per-layer budgets and GQA head cuts (the global
budget: tests/test_prune_global_budget.py).

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
from graphopt.passes._calibration import calibration_batches, gather_statistics, read_calibration_text
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
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


def test_tokenizer_option_is_the_same_as_the_context_tokenizer(calib_file, hf_tokenizer_json):  # noqa: F811
    """The runner's YAML names the tokenizer file; graphopt.optimize hands the loaded one: same result."""
    from graphopt.checkpoints.tokenizers import load_tokenizer
    from graphopt.checkpoints.encode import tok_encode
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
