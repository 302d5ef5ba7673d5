"""GraphoptLM: graphopt as an lm-evaluation-harness model (`--model graphopt`).

Every loglikelihood request of every task goes through one Scorer (graphopt.scoring.scorer): requests
are tokenised exactly as lm-eval's `hf` model does (lm-eval's own TemplateLM pairing, HFLM's tok_encode
rules, BOS included), requests that share a context are grouped and packed into rows (each context
once, its continuations after it), scored through the one optimised graph, and answered as
(log-likelihood, is_greedy) in lm-eval's request order. loglikelihood_rolling uses lm-eval's own
windowing; generate_until is refused (graphopt scores, it does not generate).

Under torchrun every process answers every request (graphopt.harness.world) and reports rank 0 and
world size 1 to lm-eval, as lm-eval 0.4.13 expects of a model that splits work itself ("under TP
launchers every rank reports lm.rank == 0"): lm-eval then lets only LOCAL_RANK 0 return results, and
`graphopt lm-eval` keeps every process but global rank 0 from printing or writing them
(graphopt.commands.lm_eval).

Where the time went (startup, load, setup, scoring: graphopt.time_line) is printed once, to stderr, at
the end: by `graphopt lm-eval` when lm-eval returns, else when the process exits (`lm_eval --model graphopt`).
"""
from __future__ import annotations

import atexit
import sys
import warnings

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from graphopt.env_checks import check_device
from graphopt.errors import UserError
from graphopt.harness.model_args import GraphoptArgs, with_lm_eval_flags
from graphopt.checkpoints.encode import prefix_token_id, tok_encode
from graphopt.pipeline import PassError, check_pipeline
from graphopt.scoring.batch import Request
from graphopt.scoring.requests import fit_context
from graphopt.scoring.scorer import Scorer, Sharding
from graphopt.time_line import Clock, time_columns, time_line

_UNREPORTED: list = []  # GraphoptLM instances that scored and whose time line is not printed yet


def print_time_lines() -> None:
    """Each GraphoptLM's time line not printed yet, to stderr (one line each; run at exit too)."""
    while _UNREPORTED:
        print(_UNREPORTED.pop(0).time_line(), file=sys.stderr)
    sys.stderr.flush()


atexit.register(print_time_lines)

GENERATE_REFUSED = ("graphopt scores log-likelihoods and does not generate text; task(s) {tasks} need "
                    "generate_until. Run them with another lm-eval model (e.g. --model hf).")


class GraphoptLM(TemplateLM):
    """lm_eval.api.model.LM backed by a graphopt-optimised graph; keyword arguments: see GraphoptArgs."""

    backend = "causal"

    def __init__(self, **model_args):
        super().__init__()
        self.config = cfg = GraphoptArgs.parse(model_args)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():  # lm-eval's CLI defaults to cuda:0
            warnings.warn(f"device {cfg.device!r} asked for but no CUDA device is available: scoring on cpu, "
                          "as lm-eval's hf model does", stacklevel=2)
            cfg.device = "cpu"
        check_device(cfg.device, what="model_args device")
        pipeline = self._check_pipeline(cfg)  # before the model loads
        from graphopt.harness.world import join, plan_world

        self.world = plan_world(cfg, cfg.pretrained)  # None: one process
        if self.world is not None:
            cfg.device = join(self.world, cfg.device)
        import graphopt

        self.clock = Clock()
        self._load_weights = None
        if self._sharded_load():  # a tensor-parallel rank reads only its shard, after the graph is cut
            from graphopt.checkpoints import load_model_structure
            from graphopt.distributed.load_shard import load_shard
            self.model, self.tok = load_model_structure(cfg.pretrained, dtype=cfg.torch_dtype, tokenizer=cfg.tokenizer)
            self._load_weights = lambda gm: load_shard(gm, cfg.pretrained, self.world.model_rank,  # noqa: E731
                                                       self.world.tp, self.model.args)
        else:
            self.model, self.tok = graphopt.load_model(cfg.pretrained, dtype=cfg.torch_dtype, device=cfg.device,
                                                       tokenizer=cfg.tokenizer)
        self.load_seconds = self.clock.loaded()
        self._listed = False  # in _UNREPORTED: its time line is printed at the end
        self._max_length = min(cfg.max_length or self.model.args.max_seq_len, self.model.args.max_seq_len)
        self._device = torch.device(cfg.device)
        self.scorer = self._make_scorer(pipeline)
        self.stats = {"load_seconds": self.load_seconds, "setup_seconds": 0.0, "score_seconds": 0.0, "n_batches": 0}

    def _make_scorer(self, pipeline) -> Scorer:
        """Every request of every task goes through this one Scorer (its runnables are built once and kept):
        the prefix tree over all requests with a pipeline (row_len given: today's packed rows of that
        length), lm-eval's own per-pair way without one."""
        cfg = self.config
        layout = "packed" if cfg.row_len and pipeline is not None else None  # row_len: rows of today's layout
        options = {} if pipeline is None else {"max_tokens": cfg.max_tokens} | (
            {"row_len": cfg.row_len} if cfg.row_len else {})
        sharding = None if self.world is None else Sharding(self.world.shape, self.world.rank, self._load_weights)
        try:
            return Scorer(self.model, pipeline, cfg.compiler, device=cfg.device, layout=layout, layout_options=options,
                          greedy=True, sharding=sharding)
        except (PassError, ValueError) as e:
            raise UserError(f"--model_args pipeline={cfg.pipeline!r}: {e}") from e

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "GraphoptLM":
        """lm-eval's constructor call: --model_args plus its own flags, a --model_args key winning over the
        flag of the same name (`device=cpu` with lm-eval's --device, given or its default cuda:0)."""
        return cls(**with_lm_eval_flags(dict(arg_dict), additional_config))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "GraphoptLM":
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    def _sharded_load(self) -> bool:
        import os
        return self.world is not None and self.world.tp > 1 and os.path.isdir(self.config.pretrained)

    @staticmethod
    def _check_pipeline(cfg: GraphoptArgs):
        """The pipeline checked before the model loads: None (eager), "auto" (resolved for the model and
        device by the Scorer) or a CheckedPipeline. A bad pipeline or compiler is a UserError."""
        spec = cfg.pipeline_spec()
        if spec in (None, "auto"):
            return spec
        try:
            return check_pipeline(spec, cfg.compiler or "none")
        except (PassError, KeyError, ValueError) as e:
            raise UserError(f"--model_args pipeline={cfg.pipeline!r}: {e}") from e

    # ---- what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tok)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return repr(self.tok)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        ids = tok_encode(self.tok, string, add_special_tokens, self.config.add_bos_token)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(tokens))

    def get_model_info(self) -> dict:
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype), "graphopt_pipeline": self.config.pipeline,
                "graphopt_compiler": self.config.compiler}

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation) or None, context_ids, continuation_ids)] -> [(loglik, is_greedy)]."""
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        scored, contexts = [], {}
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:  # nothing to score: log 1, and greedy (all() of nothing), as hf answers
                answers[i] = (0.0, True)
                continue
            ctx, cont = fit_context(ctx, cont, self.max_length, f"request {i}")
            question = contexts.setdefault(ctx, len(contexts))  # requests with one context share a row
            scored.append((i, Request(question=question, choice=i, context_ids=ctx, continuation_ids=cont,
                                      continuation_chars=0)))
        if scored:
            loglik, greedy = self._score([r for _, r in scored], progress=not disable_tqdm)
            for k, (i, _) in enumerate(scored):
                answers[i] = (float(loglik[k]), bool(greedy[k]))
        for (pair, _, _), answer in zip(requests, answers):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihoods with lm-eval's own windows (get_rolling_token_windows, context 1)."""
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (loglik, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[r] += loglik
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        tasks = sorted({getattr(r, "task_name", None) or "?" for r in requests})
        raise UserError(GENERATE_REFUSED.format(tasks=", ".join(tasks)))

    def time_columns(self) -> dict:
        """startup, load, setup (its split), scoring so far: graphopt.time_line.time_columns."""
        st = self.stats
        return time_columns(self.clock.startup_s, self.load_seconds, self.scorer.setup_split(), st["setup_seconds"],
                            st["score_seconds"])

    def time_line(self) -> str:
        return "graphopt " + time_line(self.time_columns())

    # ---- scoring
    def _score(self, requests: list[Request], progress: bool):
        """(log-likelihood, is_greedy) of every request, on every rank."""
        show = progress and self.config.progress and (self.world is None or self.world.rank == 0)
        try:
            scores = self.scorer.score(requests, progress=show, desc="graphopt")
        except ValueError as e:  # a request the layout cannot take, more replicas than contexts, ...
            raise UserError(f"graphopt: {e}") from e
        self.stats["setup_seconds"] = self.scorer.setup_seconds
        self.stats["score_seconds"] += scores.seconds
        self.stats["n_batches"] += scores.n_batches
        if not self._listed and (self.world is None or self.world.rank == 0):
            self._listed = True
            _UNREPORTED.append(self)
        return scores.loglik, scores.greedy
