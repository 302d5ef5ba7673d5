"""The `--model_args` of `--model graphopt`: their names, defaults and checks, before anything loads.

lm-eval hands `key=value` pairs (already turned into bool / int / float / str by its parser) and,
from its own flags, batch_size, max_batch_size and device (with_lm_eval_flags: a key given in
--model_args wins over the flag). A key graphopt does not know is an error naming it and the valid
ones, never silently ignored."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from graphopt.compilers import COMPILERS
from graphopt.errors import UserError

DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class GraphoptArgs:
    pretrained: str = "default"  # a checkpoint graphopt loads (HF dir, Meta dir, .gguf) or a preset name
    tokenizer: str | None = None  # a tokenizer file or folder (default: the one next to the checkpoint)
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (= float32 here: answers equal to the reference)
    device: str = "cpu"
    pipeline: str = "auto"  # auto | none | a named pipeline | pass names joined by '+'
    compiler: str | None = None  # none | inductor | inductor-frozen | eager-fx (default: the pipeline's best)
    max_tokens: int = 4096  # tokens per batch (rows x row length)
    row_len: int | None = None  # tokens per packed row (default: the longest context + its continuations)
    add_bos_token: bool | None = None  # None: the tokenizer's default, as lm-eval's hf model
    max_length: int | None = None  # the model's context window (default: its max_seq_len)
    max_gen_toks: int = 256  # new tokens of a generate_until request whose task sets none (lm-eval's hf default)
    slots: int | None = None  # generate_until prompts decoding together (the decode engine's static KV cache rows;
    #                           None: as many as its KV budget holds at the requests' length, up to 32)
    progress: bool = True
    # under torchrun (graphopt.harness.world): replicas x tensor-parallel shards = WORLD_SIZE
    data_parallel: int | None = None  # replicas splitting the requests (default: WORLD_SIZE / tensor_parallel)
    tensor_parallel: int = 1  # ranks sharing one model (the tensor_parallel pass on their sub-group)
    pipeline_parallel: int = 1  # refused above 1 (see check); accepted so the refusal can say why
    # lm-eval's own flags, accepted as hf accepts them: graphopt batches by tokens (max_tokens), not rows
    batch_size: int | str | None = None
    max_batch_size: int | None = None
    trust_remote_code: bool | None = None  # a user of hf passes it out of habit; graphopt runs no remote code

    @classmethod
    def parse(cls, given: dict) -> "GraphoptArgs":
        known = [f.name for f in fields(cls)]
        for key in given:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UserError(f"--model_args: unknown key {key!r}{hint}; graphopt takes {', '.join(known)}")
        args = cls(**{k: v for k, v in given.items() if v is not None})
        args.check()
        return args

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"--model_args dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.compiler is not None and self.compiler not in COMPILERS:
            raise UserError(f"--model_args compiler={self.compiler!r}: expected one of {', '.join(COMPILERS)}")
        for key in ("max_tokens", "row_len", "max_length", "max_gen_toks", "slots", "data_parallel",
                    "tensor_parallel", "pipeline_parallel"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"--model_args {key}={value!r}: expected a positive integer")
        if self.add_bos_token not in (None, True, False):
            raise UserError(f"--model_args add_bos_token={self.add_bos_token!r}: expected True or False")
        if self.pipeline_parallel > 1:
            raise UserError(f"--model_args pipeline_parallel={self.pipeline_parallel}: not available in the lm-eval "
                            "backend (a pipeline-split graph returns log-likelihoods only, and lm-eval asks for "
                            "is_greedy too); use tensor_parallel and data_parallel here, or `graphopt run` with "
                            "pipeline_parallel")
        if self.tensor_parallel > 1 and self.pipeline == "none":
            raise UserError(f"--model_args tensor_parallel={self.tensor_parallel} with pipeline=none: the eager "
                            "per-pair reference is not sharded; tensor_parallel needs a captured pipeline (auto, "
                            "exact, ...)")
        self.pretrained, self.pipeline = str(self.pretrained), str(self.pipeline)
        self.tokenizer = None if self.tokenizer is None else str(self.tokenizer)

    @property
    def torch_dtype(self) -> str:
        return "float32" if self.dtype == "auto" else self.dtype

    def pipeline_spec(self):
        """The pipeline as graphopt.optimize takes it: None (eager, per pair), 'auto', or names/passes."""
        if self.pipeline == "none":
            return None
        if self.pipeline == "auto":
            return "auto"
        parts = [p for p in self.pipeline.replace(";", "+").split("+") if p]
        return parts[0] if len(parts) == 1 else parts


def with_lm_eval_flags(model_args: dict, flags: dict | None) -> dict:
    """model_args plus lm-eval's own flags (--batch_size, --max_batch_size, --device) where model_args does
    not set the same key: the --model_args key wins. (lm-eval passes --device even when it is not given,
    as its default cuda:0, so the two cannot be required to agree.)"""
    extra = {k: v for k, v in (flags or {}).items() if v is not None and k not in model_args}
    return {**model_args, **extra}
