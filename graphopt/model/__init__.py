from graphopt.model.args import PRESETS, ModelArgs, llama_ffn_hidden_dim
from graphopt.model.llama import Transformer, init_random_weights

__all__ = ["ModelArgs", "PRESETS", "Transformer", "init_random_weights", "llama_ffn_hidden_dim"]
