"""GraphoptLM: graphopt as an lm-evaluation-harness model (`--model graphopt`).

Every loglikelihood request of every task goes through one Scorer (graphopt.scoring.scorer): requests
are tokenised exactly as lm-eval's `hf` model does (lm-eval's own TemplateLM pairing, HFLM's tok_encode
rules, BOS included), requests that share a context are grouped and packed into rows (each context
once, its continuations after it), scored through the one optimised graph, and answered as
(log-likelihood, is_greedy) in lm-eval's request order. loglikelihood_rolling uses lm-eval's own
windowing. generate_until hands every request of every task to one generator at once (built on the
first call and kept, like the Scorer: the decode engine over the same pipeline) and answers as lm-eval's
hf model does (graphopt.harness.generate);
--apply_chat_template / --system_instruction render the checkpoint's own chat template
(graphopt.harness.chat_template).

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
import time
import warnings

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from graphopt.env_checks import check_device
from graphopt.errors import UserError
from graphopt.generation.engine import DecodeEngine
from graphopt.generation.step import decode_auto_pipeline
from graphopt.harness.chat_template import ChatTemplate, find_chat_template
from graphopt.harness.generate import answer_text, decode_text, eos_ids, until_request, warn_truncated
from graphopt.harness.model_args import GraphoptArgs, with_lm_eval_flags
from graphopt.checkpoints.encode import prefix_token_id, tok_encode
from graphopt.pipeline import PassError, check_pipeline
from graphopt.scoring.batch import Request
from graphopt.scoring.requests import fit_context
from graphopt.scoring.scorer import Scorer, Sharding
from graphopt.time_line import Clock, merge_setups, time_columns, time_line

_UNREPORTED: list = []  # GraphoptLM instances that scored and whose time line is not printed yet


def print_time_lines() -> None:
    """Each GraphoptLM's time line not printed yet, to stderr (one line each; run at exit too)."""
    while _UNREPORTED:
        print(_UNREPORTED.pop(0).time_line(), file=sys.stderr)
    sys.stderr.flush()


atexit.register(print_time_lines)


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
        self._generator = None  # built on the first generate_until (_make_generator), then kept
        self._chat_template: ChatTemplate | None | bool = False  # False: not looked for yet
        self.stats = {"load_seconds": self.load_seconds, "setup_seconds": 0.0, "score_seconds": 0.0, "n_batches": 0,
                      "generate_seconds": 0.0, "generated_tokens": 0, "generator_setup_seconds": 0.0}

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
        return decode_text(self.tok, [tokens] if isinstance(tokens, int) else tokens, skip_special_tokens)

    @property
    def max_gen_toks(self) -> int:
        return self.config.max_gen_toks

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
        """Greedy completions of every request at once through this model's one generator, answered as
        lm-eval's hf model answers (graphopt.harness.generate)."""
        if not requests:
            return []
        eos, eos_text = eos_ids(self.config.pretrained, self.tok), self.tok_decode(self.eot_token_id, False)
        prepared = [until_request(getattr(r, "task_name", None) or "?", context, gen_kwargs, self.tok,
                                  add_bos_token=self.config.add_bos_token, max_length=self.max_length,
                                  default_max_gen_toks=self.max_gen_toks, eos=eos, eos_text=eos_text)
                    for r, (context, gen_kwargs) in ((r, r.args) for r in requests)]
        warn_truncated(prepared)
        show = not disable_tqdm and self.config.progress and (self.world is None or self.world.rank == 0)
        generator = self.generator  # built (and timed as setup) on the first call
        start = time.perf_counter()
        try:
            completions = generator.generate([p.request for p in prepared], progress=show)
        except ValueError as e:  # a request the generator cannot take
            raise UserError(f"graphopt generate_until: {e}") from e
        self.stats["generate_seconds"] += time.perf_counter() - start
        self.stats["generated_tokens"] += sum(c.steps for c in completions)
        self._list_time_line()
        answers = [answer_text(self.tok, c.ids, p.until) for c, p in zip(completions, prepared)]
        for r, answer in zip(requests, answers):
            self.cache_hook.add_partial("generate_until", r.args, answer)
        return answers

    @property
    def generator(self):
        """This model's one generator: built on first use (a suite without generate_until never builds it)."""
        if self._generator is None:
            if self._load_weights is not None:
                raise UserError("generate_until with a tensor-parallel load (each rank holds a shard of the "
                                "checkpoint) is not available; run generative tasks without tensor_parallel")
            start = time.perf_counter()
            self._generator = self._make_generator()
            self.stats["generator_setup_seconds"] = time.perf_counter() - start
        return self._generator

    def _make_generator(self):
        """Any object with generate(requests, progress) -> [Completion] (graphopt.generation): the decode engine
        (static KV cache, continuous batching over `slots` rows) optimised by the pipeline this model scores
        with. The eager reference instead: ReferenceGenerator(self.model, device=self._device)."""
        cfg = self.config
        spec = cfg.pipeline_spec()
        if spec is None:  # pipeline=none: the eager model, reading its KV cache
            pipeline, compiler = None, self.scorer.compiler
        elif spec == "auto":  # the engine's own path of the device (decode-cpu on CPU), else the exact path
            pipeline, compiler = decode_auto_pipeline(self._device, cfg.compiler), cfg.compiler or "none"
        else:
            pipeline, compiler = list(self.scorer.pipeline.specs), self.scorer.compiler
        try:
            return DecodeEngine(self.model, pipeline, compiler, slots=cfg.slots, device=self._device)
        except (PassError, ValueError) as e:
            raise UserError(f"--model_args pipeline={cfg.pipeline!r}: generate_until: {e}") from e

    # ---- chat templates (--apply_chat_template, --system_instruction)
    def _template(self) -> ChatTemplate:
        if self._chat_template is False:
            self._chat_template = find_chat_template(self.config.pretrained, self.config.tokenizer)
        if self._chat_template is None:
            raise UserError(f"--apply_chat_template: {self.config.tokenizer or self.config.pretrained} has no chat "
                            "template (looked for chat_template.jinja, tokenizer_config.json's chat_template, a "
                            ".gguf's tokenizer.chat_template)")
        return self._chat_template

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template lm-eval records (its hf model's choice: a name picks one of several, else the default)."""
        if chat_template is False or chat_template is None:
            return None
        return self._template().select(chat_template if isinstance(chat_template, str) else None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """As lm-eval's hf model: render, and if the template raises, render again without system messages."""
        import jinja2

        template = self._template()
        try:
            return template.render(chat_history, add_generation_prompt)
        except jinja2.exceptions.TemplateError:
            warnings.warn("the chat template failed; rendering it again without the system message", stacklevel=2)
            return template.render([m for m in chat_history if m["role"] != "system"], add_generation_prompt)

    def time_columns(self) -> dict:
        """startup, load, setup (its split), scoring so far: graphopt.time_line.time_columns."""
        st, setups = self.stats, list(self.scorer.setups)
        graph = getattr(self._generator, "graph", None)
        if getattr(graph, "optimized", None) is not None:  # its first call is generation's, not scoring's
            setups.append({**graph.optimized.setup, "first_call_s": 0.0})
        return time_columns(self.clock.startup_s, self.load_seconds, merge_setups(setups),
                            st["setup_seconds"] + st["generator_setup_seconds"], st["score_seconds"],
                            st["generate_seconds"])

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
        self._list_time_line()
        return scores.loglik, scores.greedy

    def _list_time_line(self) -> None:
        """This model's time line is printed at the end (once, by rank 0)."""
        if not self._listed and (self.world is None or self.world.rank == 0):
            self._listed = True
            _UNREPORTED.append(self)
