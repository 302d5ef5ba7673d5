"""A uniformly pruned model saved as a Hugging Face LLaMA directory (graphopt.checkpoints.save_hf,
`graphopt prune`): graphopt.load_model and transformers' LlamaForCausalLM load it and give the pruned
graph's log-likelihoods (fp32, atol 1e-5) with the smaller shape in config.json; a global (non-uniform)
cut is refused naming the layers' sizes (in memory, FFNs of different widths score eagerly); the
tokenizer travels with the weights."""
import json
import re

import pytest
import torch

import graphopt
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.gguf_tokenizer import GGUFTokenizer
from graphopt.checkpoints.save_hf import _write_tokenizer, pruned_transformer, save_hf_checkpoint
from graphopt.checkpoints.tokenizers import HFTokenizer, load_tokenizer
from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.cli import main
from graphopt.graph_attrs import attr, set_attr
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext
from graphopt.commands.prune import prune_and_save
from graphopt.scoring.batch import ScoreModule
from tests.test_capture import distinct_score_inputs
from tests.test_passes_prune import _prune, _setup
from tests.test_tokenizers import hf_tokenizer_json  # noqa: F401  (fixture)

ATOL = 1e-5


def _hf_logprobs(hf_model, inputs):
    """[N] log-probabilities of the targets from transformers' model (causal rows, positions 0..T-1)."""
    ids, _, _, idx, targets = inputs
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits.float()  # [B, T, V]
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1])[idx], -1).gather(-1, targets[:, None])[:, 0]


@pytest.mark.parametrize("preset,what,ratio,shape", [
    ("gqa-9-3", "both", 0.34, {"num_attention_heads": 6, "num_key_value_heads": 2}),  # tied, 9/3 -> 6/2
    ("gqa-6-2", "heads", 0.5, {"num_attention_heads": 3, "num_key_value_heads": 1}),
    ("gqa-6-2", "ffn", 0.25, {"num_attention_heads": 6, "num_key_value_heads": 2})])
def test_saved_pruned_model_loads_in_graphopt_and_transformers(tmp_path, preset, what, ratio, shape):
    transformers = pytest.importorskip("transformers")
    args, model, inputs, gm = _setup(preset)
    pruned_gm, (rec,) = _prune(gm, inputs, ratio=ratio, what=what)
    eager = pruned_transformer(pruned_gm, args)
    out = save_hf_checkpoint(eager, tmp_path / "pruned", WordHashTokenizer(args.vocab_size))
    config = json.loads((out / "config.json").read_text())
    hidden = rec.stats["layers"]["model.layers.0"].get("ffn_channels", args.hidden_dim)  # reported when cut
    assert {k: config[k] for k in shape} == shape and config["intermediate_size"] == hidden
    assert config["head_dim"] == args.head_dim and config["tie_word_embeddings"] == args.tie_embeddings
    assert (hidden < args.hidden_dim) == (what != "heads")
    assert sum(p.numel() for p in eager.parameters()) == rec.stats["params_after"]

    loaded, tok = graphopt.load_model(out)
    assert isinstance(tok, WordHashTokenizer) and tok.vocab_size == args.vocab_size
    hf = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    for B, T, N in ((2, 8, 5), (3, 11, 9)):
        x = distinct_score_inputs(B, T, N, seed=B + T)
        with torch.no_grad():
            want = pruned_gm(*x)
            torch.testing.assert_close(ScoreModule(loaded)(*x), want, atol=ATOL, rtol=0)
        torch.testing.assert_close(_hf_logprobs(hf, x), want, atol=ATOL, rtol=0)


def test_global_cut_is_refused_naming_the_layer_sizes(tmp_path):
    args, model, inputs, gm = _setup("gqa-9-3")
    for key in ("w1", "w2", "w3"):  # layer 1's weights x10: the raw global budget cuts the layers unevenly
        name = f"model.layers.1.feed_forward.{key}.weight"
        set_attr(gm, name, attr(gm, name) * 10)
    pruned_gm, (rec,) = _prune(gm, inputs, ratio=0.3, budget="global", normalize="none")
    sizes = [rec.stats["layers"][f"model.layers.{i}"]["ffn_channels"] for i in range(2)]
    assert sizes[0] != sizes[1]
    with pytest.raises(CheckpointError, match=rf"pruned layers differ in size .*0: {sizes[0]}/9/3, 1: {sizes[1]}/9/3.*"
                                              r"save a per_layer \(uniform\) cut"):
        pruned_transformer(pruned_gm, args)


def test_global_ffn_cut_scores_eagerly_but_is_not_saved(tmp_path):
    """varying_ffn: each layer's FeedForward at its own width gives the pruned graph's log-probs (fp32,
    1e-5) with the graph's parameter count; save_hf_checkpoint refuses it, naming the widths. A heads-only
    global cut (which failed inside the pass with an empty FFN plan before) still cannot be built."""
    args, model, inputs, gm = _setup("gqa-9-3")
    for key in ("w1", "w2", "w3"):
        name = f"model.layers.1.feed_forward.{key}.weight"
        set_attr(gm, name, attr(gm, name) * 10)
    pruned_gm, (rec,) = _prune(gm, inputs, ratio=0.3, budget="global", normalize="none")
    sizes = [rec.stats["layers"][f"model.layers.{i}"]["ffn_channels"] for i in range(2)]
    eager = pruned_transformer(pruned_gm, args, varying_ffn=True)
    assert [layer.feed_forward.w1.weight.shape[0] for layer in eager.layers] == sizes and sizes[0] != sizes[1]
    assert sum(p.numel() for p in eager.parameters()) == rec.stats["params_after"]
    for B, T, N in ((2, 8, 5), (3, 11, 9)):
        x = distinct_score_inputs(B, T, N, seed=B + T)
        with torch.no_grad():
            torch.testing.assert_close(ScoreModule(eager)(*x), pruned_gm(*x), atol=ATOL, rtol=0)
    with pytest.raises(CheckpointError, match=re.escape(f"FFN widths differ ({sizes})")):
        save_hf_checkpoint(eager, tmp_path / "out", WordHashTokenizer(args.vocab_size))
    gm = _setup("gqa-9-3")[3]  # heads that differ per layer stay refused: attention is built from one count
    for key in ("wq", "wk", "wv", "wo"):
        name = f"model.layers.1.attention.{key}.weight"
        set_attr(gm, name, attr(gm, name) * 10)
    heads_cut, (rec,) = _prune(gm, inputs, ratio=0.34, what="heads", budget="global", normalize="none",
                               max_layer_ratio=1.0)
    assert [rec.stats["layers"][f"model.layers.{i}"]["kv_heads"] for i in range(2)] == [1, 3]
    with pytest.raises(CheckpointError, match="pruned layers differ in size .*0: 192/3/1, 1: 192/9/3"):
        pruned_transformer(heads_cut, args, varying_ffn=True)


def test_tokenizer_files_travel_with_the_weights(tmp_path, hf_tokenizer_json):  # noqa: F811
    text = "the quick brown fox jumps"
    hf_tok = HFTokenizer(hf_tokenizer_json)
    (tmp_path / "a").mkdir()
    _write_tokenizer(hf_tok, tmp_path / "a")  # a tokenizer read from a file: the file is copied
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == hf_tokenizer_json.read_bytes()
    # a GGUF's tokenizer (built in memory): saved as tokenizer.json with its bos / eos names
    gguf = GGUFTokenizer(hf_tok.tok, bos_id=1, eos_id=2, add_bos_token=True, where="test.gguf")
    (tmp_path / "b").mkdir()
    _write_tokenizer(gguf, tmp_path / "b")
    back = load_tokenizer(tmp_path / "b")
    assert back.encode(text) == gguf.encode(text) and (back.bos_id, back.eos_id) == (1, 2)
    with pytest.raises(CheckpointError, match="cannot write tokenizer"):
        _write_tokenizer(object(), tmp_path)


def test_prune_command_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "tiny-pruned"
    assert main(["prune", "tiny", "--ratio", "0.25", "--out", str(out), "--output", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model, _ = graphopt.load_model(out)
    assert model.args.hidden_dim == result["layers"]["model.layers.0"]["ffn_channels"]
    assert sum(p.numel() for p in model.parameters()) == result["n_params"] == result["params_after"]
    assert result["ffn_channels_removed"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["--ratio", "1.5"], "ratio"),
    (["--ratio", "0.2", "--criterion", "wanda"], "calibration"),
    (["--ratio", "0.2", "--what", "layers"], "'what' expects one of")])
def test_prune_command_bad_options_name_the_cause(tmp_path, capsys, argv, msg):
    assert main(["prune", "tiny", "--out", str(tmp_path / "x"), *argv]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_merged_graph_is_refused_naming_the_merge(tmp_path):
    args, model, inputs, gm = _setup("gqa-6-2")
    pruned_gm, _ = _prune(gm, inputs, ratio=0.25, what="ffn")
    merged, _ = run_passes(pruned_gm, ["merge_qkv", "merge_gate_up"], PassContext(example_inputs=inputs))
    with pytest.raises(CheckpointError, match="save it before merge_qkv / merge_gate_up"):
        prune_and_save  # noqa: B018  (the command's function: one import path for the CLI and benchmarks)
        pruned_transformer(merged, args)
