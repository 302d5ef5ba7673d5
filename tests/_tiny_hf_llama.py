"""A tiny random Hugging Face Llama checkpoint with a byte-level BPE tokenizer trained on given text, saved
as transformers saves it (config.json, safetensors, tokenizer.json, tokenizer_config.json): what the
generation tests load both into graphopt and into transformers / lm-eval's hf model."""
from __future__ import annotations

import json
from pathlib import Path


def write_tiny_hf_llama(folder: Path, texts: list[str], vocab_size: int = 300, max_positions: int = 128,
                        chat_template: str | None = None, seed: int = 0, tied: bool = True,
                        init_std: float = 0.02) -> Path:
    """folder/: GQA (6 query / 2 kv heads), tied embeddings or not, weights drawn with std init_std, a tokenizer
    that adds BOS by default (<s> = 0, </s> = 1 = EOS) whose alphabet is the characters of `texts` (so any
    sequence of its tokens decodes to text, never to a broken byte); chat_template is written into
    tokenizer_config.json (the Hub's older way)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"])
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    if chat_template is not None:
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = chat_template
        config_path.write_text(json.dumps(config))
        for written in folder.glob("chat_template.jinja"):  # transformers 5 writes it apart; keep one source
            written.unlink()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=max_positions,
                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1, initializer_range=init_std)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder
