"""GraphoptLM: graphopt as an lm-evaluation-harness model (`--model graphopt`).

Every loglikelihood request of every task goes through one optimised graph: requests are tokenised
exactly as lm-eval's `hf` model does (lm-eval's own TemplateLM pairing, HFLM's tok_encode rules, BOS
included), requests that share a context are grouped and packed into rows (each context once, its
continuations after it), scored by ScoreModule(greedy=True) through graphopt.optimize, and answered
as (log-likelihood, is_greedy) in lm-eval's request order. loglikelihood_rolling uses lm-eval's own
windowing; generate_until is refused (graphopt scores, it does not generate).
"""
from __future__ import annotations

import time
import warnings

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from graphopt.checkpoints.encode import prefix_token_id, tok_encode
from graphopt.env_checks import check_device
from graphopt.errors import UserError
from graphopt.harness.model_args import GraphoptArgs, with_lm_eval_flags
from graphopt.scoring.batch import Request, ScoreModule
from graphopt.scoring.requests import first_identical, fit_context
from graphopt.scoring.strategies import build_batches

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
        self._check_pipeline(cfg)
        from graphopt.harness.world import join, plan_world

        self.world = plan_world(cfg, cfg.pretrained)  # None: one process
        self._answered = False  # see rank
        if self.world is not None:
            cfg.device = join(self.world, cfg.device)
        import graphopt

        start = time.perf_counter()
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
        self.load_seconds = time.perf_counter() - start
        self._max_length = min(cfg.max_length or self.model.args.max_seq_len, self.model.args.max_seq_len)
        self._device = torch.device(cfg.device)
        self._scorer = None  # the optimised ScoreModule, captured on the first packed batch
        self.stats = {"load_seconds": self.load_seconds, "setup_seconds": 0.0, "score_seconds": 0.0, "n_batches": 0}

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

    @property
    def rank(self) -> int:
        """0 until this process has answered requests (lm-eval splits documents by it, and graphopt wants
        every rank to build every request: graphopt.harness.world), then the global rank, so that only
        rank 0 returns, prints and writes lm-eval's results."""
        return self.world.rank if self.world is not None and self._answered else 0

    @staticmethod
    def _check_pipeline(cfg: GraphoptArgs) -> None:
        """A bad pipeline or compiler is reported before the model loads."""
        spec = cfg.pipeline_spec()
        if spec in (None, "auto"):
            return
        from graphopt.pipeline import PassError, check_compiler_fits, check_order, parse_pipeline
        try:
            specs = parse_pipeline(spec)
            check_order(specs)
            check_compiler_fits(specs, cfg.compiler or "none")
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
        self._answered = True
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

    # ---- scoring
    def _score(self, requests: list[Request], progress: bool):
        from graphopt.scoring.evaluate import auto_pipeline, score_requests_greedy

        cfg, spec, compiler = self.config, self.config.pipeline_spec(), self.config.compiler
        if spec == "auto":
            spec, auto_compiler = auto_pipeline(cfg.device, self.model.args)
            compiler = compiler or auto_compiler
        all_requests, mine = requests, None
        if self.world is not None:  # this replica's share; every rank gets every answer back below
            from graphopt.harness.world import check_same_requests, my_share
            check_same_requests(all_requests)
            mine = my_share(self.world, all_requests)
            requests = [all_requests[i] for i in mine]
            progress = progress and self.world.rank == 0
        if spec is None:  # the eager per-pair reference, lm-eval's own way
            batches = build_batches(requests, "per_pair")
            scorer = ScoreModule(self.model, greedy=True).eval()
        else:
            options = {"max_tokens": cfg.max_tokens} | ({"row_len": cfg.row_len} if cfg.row_len else {})
            batches = build_batches(requests, "packed", **options)
            scorer = self._scorer or self._build_scorer(spec, compiler or "none", batches[0])
        start = time.perf_counter()
        loglik, greedy = score_requests_greedy(scorer, batches, len(requests), progress=progress and cfg.progress,
                                               device=cfg.device, desc="graphopt")
        self.stats["score_seconds"] += time.perf_counter() - start
        self.stats["n_batches"] += len(batches)
        if self.world is not None:
            from graphopt.harness.world import gather_everywhere
            loglik, greedy = gather_everywhere(self.world, mine, loglik.numpy(), greedy.numpy(), len(all_requests))
        same = first_identical(all_requests)  # identical requests: one value (exact ties stay ties)
        return loglik[same], greedy[same]

    def _build_scorer(self, spec, compiler: str, example):
        from graphopt.optimize_model import optimize

        start = time.perf_counter()
        shard = {}
        if self.world is not None and self.world.tp > 1:  # this rank's shard, on the replica's TP sub-group
            from graphopt.harness.world import with_tensor_parallel
            spec = with_tensor_parallel(spec)
            shard = dict(rank=self.world.model_rank, world_size=self.world.tp, model_args=self.model.args,
                         load_weights=self._load_weights, device=self.config.device)
        self._scorer = optimize(ScoreModule(self.model, greedy=True).eval(), example.to(self.config.device).model_inputs(),
                                spec, compiler, capture="export", **shard)
        self.stats["setup_seconds"] = time.perf_counter() - start
        return self._scorer
