"""Checkpoint loaders (Meta consolidated.NN.pth, Hugging Face directories, GGUF files), saver and tokenizers."""
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.gguf import load_gguf
from graphopt.checkpoints.hf import load_hf_checkpoint, read_hf_config
from graphopt.checkpoints.load import load_model, load_model_structure
from graphopt.checkpoints.meta import load_meta_checkpoint, meta_shard_paths, meta_split_dim, read_meta_params
from graphopt.checkpoints.save import save_meta_checkpoint
from graphopt.checkpoints.tokenizers import load_tokenizer
from graphopt.checkpoints.word_tokenizer import WordHashTokenizer

__all__ = ["CheckpointError", "WordHashTokenizer", "load_gguf", "load_hf_checkpoint", "load_meta_checkpoint",
           "load_model", "load_model_structure", "load_tokenizer", "meta_shard_paths", "meta_split_dim",
           "read_hf_config", "read_meta_params", "save_meta_checkpoint"]
