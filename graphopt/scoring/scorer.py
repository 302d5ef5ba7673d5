"""Scorer: the one path a caller's requests take to (log-likelihood, is_greedy).

    scorer = Scorer(model, pipeline="auto", device="cpu")
    scores = scorer.score(requests)        # scores.loglik: float64 [n]; scores.greedy: bool [n] or None

`graphopt eval` (evaluate), the runner's worker and the lm-eval backend all go through it. It owns what
happens to requests once they are made: the pipeline chosen (`auto`) and checked once, the layout (a
scoring strategy and its options), graphopt.optimize called once per model and kept, scoring with a
progress bar, the split over data-parallel replicas (whole questions, balanced by tokens; every rank
gets every answer back), the sharding the mesh asks for (tensor_parallel inserted, one pipeline stage
per rank) and one value for identical requests. Callers keep what is theirs: metrics, timing rows,
lm-eval's API.

The runner times the steps one by one: prepare() -> setup() -> run() (warm-up, repeats) -> collect();
score() is the four in a row.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from graphopt.distributed.mesh import MeshShape
from graphopt.pipeline import CheckedPipeline, PassError, check_pipeline, parse_pipeline
from graphopt.scoring.batch import Request, ScoreBatch, ScoreModule
from graphopt.scoring.prefix_cache import KVLayout, cached_example_inputs, cached_score_module, rows_under_prefix
from graphopt.scoring.prefix_tree import (DEFAULT_MIN_SHARED, TreePlan, TreeRunners, plan_tree, score_tree,
                                          subtree_shares)
from graphopt.scoring.requests import first_identical
from graphopt.scoring.score_loop import score_requests_greedy, sync
from graphopt.scoring.strategies import STRATEGIES, build_batches, strategy_options
from graphopt.time_line import merge_setups

TREE = "tree"  # the prefix tree over all requests (graphopt.scoring.prefix_tree): each shared prefix once
TREE_OPTIONS = {"max_tokens": 4096, "budget_mb": 1024, "min_shared_tokens": DEFAULT_MIN_SHARED}
PACKED_LAYOUTS = ("packed", "shared_prefix", "bucketed", TREE)  # layouts whose rows carry doc_ids / seg_ids


def auto_pipeline(device, model_args=None, compiler: str | None = None, layout: str = "packed") -> tuple[str, str]:
    """The fastest exact path (answers equal to the per-pair reference in fp32) for a device, a
    compiler (None: the path's own) and a layout: (pipeline, compiler).

    CPU: exact-cpu with no compiler: its oneDNN matmuls on weights packed once match inductor-frozen's
    speed without its compile (which inductor cannot cache); with a compiler exact-cpu cannot run under
    (mkldnn_linear's packed weights run uncompiled or under inductor-frozen only), exact. CUDA: gpu (exact + the block-skipping
    attention kernel) as the FX graph, 62 % MFU on an H100 with no compile (benchmarks/RESULTS.md);
    exact for a sliding-window model (the kernel has no window) or a layout without the packed ids."""
    compiler = compiler or "none"
    if torch.device(device).type != "cuda":
        try:
            check_pipeline("exact-cpu", compiler)
            return "exact-cpu", compiler
        except PassError:
            return "exact", compiler
    windowed = getattr(model_args, "sliding_window", None) is not None
    return ("exact" if windowed or layout not in PACKED_LAYOUTS else "gpu"), compiler


def default_layout(optimised: bool, batch_size: int) -> str:
    """A batch size other than 1 asks for padded rows of pairs (lm-eval's batching); at batch size 1,
    the prefix tree with a pipeline (zero-shot: today's packed rows, few-shot: each shared prefix once),
    else each pair alone (lm-eval's reference)."""
    if batch_size != 1:
        return "padded"
    return TREE if optimised else "per_pair"


def layout_names() -> list[str]:
    return [*STRATEGIES, TREE]


def options_of(layout: str) -> list[str]:
    """The options a layout takes (KeyError naming the layouts for an unknown one)."""
    if layout == TREE:
        return list(TREE_OPTIONS)
    if layout not in STRATEGIES:
        raise KeyError(f"unknown scoring layout {layout!r} (layouts: {', '.join(layout_names())})")
    return strategy_options(layout)


@dataclass
class Prepared:
    """Requests made ready for scoring: this replica's share of them, in batches."""
    requests: list[Request]  # every request of the call, in the caller's order
    same: list[int]  # first_identical(requests): each request's first identical copy
    unique: list[int]  # the distinct requests (first copies), the ones scored
    mine: list[int]  # indices into `unique` this replica scores (ascending)
    batches: list[ScoreBatch]  # (the tree builds its rows as it walks: none here)
    plan: TreePlan | None = None  # the tree layout's plan of this replica's requests
    counts: dict = field(default_factory=dict)  # the tree's forwards, filled by run()

    @property
    def n_batches(self) -> int:
        return self.counts.get("batches", 0) if self.plan is not None else len(self.batches)

    @property
    def tokens(self) -> int:
        """Tokens put through the model (padding included for batches; the tree: prefixes + rows)."""
        if self.plan is not None:
            return self.plan.stats["tokens_prefill"] + self.plan.stats["tokens_rows"]
        return sum(b.n_tokens for b in self.batches)

    @property
    def n_mine(self) -> int:
        return len(self.mine)

    @property
    def local(self) -> list[Request]:
        """The requests this replica scores."""
        return [self.requests[self.unique[j]] for j in self.mine]


@dataclass
class Scores:
    loglik: Tensor  # float64 [n_requests], in request order
    greedy: Tensor | None  # bool [n_requests] (lm-eval's is_greedy), None when the Scorer is not greedy
    seconds: float = 0.0  # scoring (device-synchronised), setup excluded
    n_batches: int = 0  # this replica's


@dataclass
class Sharding:
    """How this process takes part in a multi-process run (None of it for one process)."""
    mesh: MeshShape = field(default_factory=MeshShape)
    rank: int = 0  # global rank in the mesh
    load_weights: object = None  # fills a weightless optimised graph with this rank's weights (sharded load)

    @property
    def replica(self) -> int:
        return self.mesh.replica(self.rank)

    @property
    def model_rank(self) -> int:
        return self.mesh.model_rank(self.rank)


class Scorer:
    """Requests -> Scores through one optimised runnable, built on the first batch and kept.

    pipeline: "auto" (auto_pipeline for the device, compiler and layout), None or "none" (the eager
    model, lm-eval's per-pair reference), a CheckedPipeline, or anything parse_pipeline accepts.
    compiler: None = the pipeline's own (auto's choice, else none). layout: a scoring strategy
    (graphopt.scoring.STRATEGIES; None: default_layout) with `layout_options`; batch_size goes to a
    layout that takes one. capture: export / dynamo / none (default: export with passes, else none).
    greedy: also return lm-eval's is_greedy. sharding: data-parallel replicas split the requests,
    tensor_parallel is inserted where the mesh has tp > 1, one stage per rank where it has pp > 1.
    tokenizer: for passes that read text (prune_structured's calibration).
    keep_model_weights=False: the model's weights that the optimised graph holds in another form are
    freed as the graph is built (optimize's keep_module_weights), so they are in memory once; the model
    can no longer run eagerly, and a second graph (the tree's other one) cannot be built from it.
    Errors a user can cause are PassError / ValueError naming the option.
    """

    def __init__(self, model: nn.Module, pipeline="auto", compiler: str | None = None, *, device="cpu",
                 layout: str | None = None, batch_size: int = 1, layout_options: dict | None = None,
                 capture: str | None = None, greedy: bool = False, sharding: Sharding | None = None,
                 tokenizer=None, keep_model_weights: bool = True):
        self.model, self.device, self.greedy, self.tokenizer = model, device, greedy, tokenizer
        self.keep_model_weights = keep_model_weights
        self.sharding = sharding or Sharding()
        auto = isinstance(pipeline, str) and pipeline == "auto"
        eager = pipeline is None or (isinstance(pipeline, str) and pipeline == "none")
        self.layout = layout or default_layout(not eager, batch_size)
        if auto:
            pipeline, compiler = auto_pipeline(device, getattr(model, "args", None), compiler, self.layout)
        self.compiler = compiler or "none"
        self.pipeline: CheckedPipeline | None = None if eager else check_pipeline(
            self._with_sharding(pipeline), self.compiler)
        self.capture = capture or ("export" if self.pipeline is not None else "none")
        self.layout_options = dict(layout_options or {})
        allowed = options_of(self.layout)
        if "batch_size" in allowed:
            self.layout_options.setdefault("batch_size", batch_size)
        elif batch_size != 1:
            raise ValueError(f"scoring strategy {self.layout!r} takes no batch_size (got {batch_size})")
        unknown = sorted(set(self.layout_options) - set(allowed))
        if unknown:
            raise ValueError(f"scoring strategy {self.layout!r} has no option {', '.join(map(repr, unknown))} "
                             f"(options: {', '.join(allowed) or 'none'})")
        if self.layout == TREE:
            self.layout_options = {**TREE_OPTIONS, **self.layout_options}
            if self.capture != "export" or self.sharding.mesh.pp > 1:
                raise ValueError("scoring layout 'tree' runs graphs captured by torch.export that read a KV cache: "
                                 "it needs a pipeline, capture export and no pipeline_split over ranks (use packed)")
        self.runnable = None  # the optimised ScoreModule, built by setup() on the first batch
        self.cache_runnable = None  # the tree's graph that reads (and fills) a KV cache, built when a plan needs it
        self.setup_seconds = 0.0
        self.setups: list[dict] = []  # each optimize() result's Optimized.setup (first_call_s filled on its call)

    def setup_split(self) -> dict:
        """Where the setup went, over every graph built so far (graphopt.time_line.merge_setups)."""
        return merge_setups(self.setups)

    def _with_sharding(self, pipeline):
        """The pipeline with tensor_parallel at the latest place the pass order allows when the mesh
        shards tensors and the pipeline does not say where."""
        if self.sharding.mesh.tp == 1:
            return pipeline
        specs = parse_pipeline(pipeline.specs if isinstance(pipeline, CheckedPipeline) else pipeline)
        if any(s.name == "tensor_parallel" for s in specs):
            return pipeline
        from graphopt.pipeline import check_order
        last_error = None
        for at in range(len(specs), -1, -1):
            candidate = specs[:at] + parse_pipeline("tensor_parallel") + specs[at:]
            try:
                check_order(candidate)
                return candidate
            except PassError as e:
                last_error = e
        raise PassError(f"no place for the tensor_parallel pass in {[s.name for s in specs]}: {last_error}")

    @property
    def labels(self) -> list[str]:
        """The passes' labels (empty for the eager model)."""
        return self.pipeline.labels() if self.pipeline is not None else []

    # ---- the steps
    def prepare(self, requests: Sequence[Request], to_device: bool = False) -> Prepared:
        """This replica's share of the distinct requests (identical ones are scored once) in batches of the
        layout (moved to the device when asked: the runner keeps host-to-device copies out of its
        timings); the tree layout plans its walk instead."""
        requests = list(requests)
        same = first_identical(requests)
        unique = [i for i, first in enumerate(same) if first == i]
        distinct = [requests[i] for i in unique]
        mine, plan = list(range(len(distinct))), None
        if self.layout == TREE:
            plan = self._plan(distinct)
        if self.sharding.mesh.dp > 1:
            from graphopt.distributed.data_parallel import check_same_requests, split_by_tokens
            check_same_requests(requests)
            dp, replica = self.sharding.mesh.dp, self.sharding.replica
            mine = (subtree_shares(distinct, dp, plan) if plan is not None else split_by_tokens(distinct, dp))[replica]
            plan = self._plan([distinct[j] for j in mine]) if plan is not None else None
        prepared = Prepared(requests, same, unique, mine, [], plan)
        if plan is None:
            prepared.batches = build_batches(prepared.local, self.layout, **self.layout_options)
            if to_device:
                prepared.batches = [b.to(self.device) for b in prepared.batches]
        return prepared

    def _plan(self, requests: list[Request]) -> TreePlan:
        opts = self.layout_options
        return plan_tree(requests, KVLayout.of_args(self.model.args).bytes_per_token, opts["budget_mb"] << 20,
                         opts["min_shared_tokens"])

    def setup(self, prepared: Prepared):
        """Capture, passes and compile, once per Scorer, on the first batch: the runnable. The tree builds
        what its plan needs: the graph that reads a KV cache when a prefix is cached, else today's graph."""
        needs_cache = prepared.plan is not None and prepared.plan.stats["cached_nodes"] > 0
        if needs_cache and self.cache_runnable is None:
            layout = KVLayout.of_args(self.model.args)
            example = cached_example_inputs(layout, vocab_size=self.model.args.vocab_size)
            module = cached_score_module(self.model, return_cache=True)
            self.cache_runnable = self._timed_optimize(module, example, without=("prefix_attention",))
        if not needs_cache and self.runnable is None:
            example = self._example(prepared)
            self.runnable = self._timed_optimize(ScoreModule(self.model, greedy=self.greedy or prepared.plan is not None)
                                                 .eval(), example.to(self.device).model_inputs())
        return self.cache_runnable if needs_cache else self.runnable

    def _example(self, prepared: Prepared) -> ScoreBatch:
        if prepared.plan is None:
            if not prepared.batches:
                raise ValueError("nothing to score: no batches to capture the model on")
            return prepared.batches[0]
        group = prepared.plan.groups[0]  # one context with its endings, in today's packed layout
        local = prepared.local
        return rows_under_prefix([local[i] for i in group.requests], 0, self.layout_options["max_tokens"])[0]

    def _timed_optimize(self, module: nn.Module, example: tuple, without: tuple = ()):
        sync(self.device)
        start = time.perf_counter()
        opt = self._optimize(module, example, without)
        sync(self.device)
        self.setup_seconds += time.perf_counter() - start
        return opt

    def _optimize(self, module: nn.Module, example: tuple, without: tuple = ()):
        from graphopt.optimize_model import optimize

        if self.setups and not self.keep_model_weights:
            raise ValueError("the model's weights were freed when its first graph was built "
                             "(keep_model_weights=False): no second graph can be built from it")
        shard, mesh = self.sharding, self.sharding.mesh
        pipeline = self.pipeline if self.pipeline is not None else CheckedPipeline((), self.compiler)
        if without:  # passes that refuse this graph (prefix_attention reads no cache)
            pipeline = CheckedPipeline(tuple(s for s in pipeline.specs if s.name not in without), self.compiler)
        opt = optimize(module, example, pipeline, self.compiler, capture=self.capture, rank=shard.model_rank,
                       world_size=mesh.model, model_args=getattr(self.model, "args", None),
                       load_weights=shard.load_weights, device=self.device, tokenizer=self.tokenizer,
                       keep_module_weights=self.keep_model_weights)
        self.setups.append(opt.setup)
        if mesh.pp > 1:  # this rank runs its stage only
            from graphopt.distributed.pipeline_run import StagePerRank, drop_other_stages
            if shard.load_weights is None:  # the whole model was loaded: keep only this rank's stage
                drop_other_stages(opt.graph, shard.model_rank)
            opt = StagePerRank(opt, mesh.pp)
        return opt

    def run(self, prepared: Prepared, progress: bool = True, desc: str = "scoring") -> tuple[Tensor, Tensor | None]:
        """Score this replica's share: (log-likelihood float64 [n_mine], is_greedy bool [n_mine] or None)."""
        if not prepared.mine:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool) if self.greedy else None
        fn = self.setup(prepared)
        if prepared.plan is None:
            return score_requests_greedy(fn, prepared.batches, prepared.n_mine, progress=progress, device=self.device,
                                         desc=desc)
        cache_fn = self.cache_runnable
        runners = TreeRunners(cache_fn, KVLayout.of_graph(cache_fn.graph) if cache_fn is not None else
                              KVLayout.of_args(self.model.args), None, self.runnable)
        opts = self.layout_options
        loglik, greedy = score_tree(prepared.local, runners, self.device,
                                    opts["budget_mb"] << 20, progress, opts["max_tokens"], opts["min_shared_tokens"],
                                    plan=prepared.plan, counts=prepared.counts)
        return loglik, greedy if self.greedy else None

    def collect(self, prepared: Prepared, loglik: Tensor, greedy: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """This replica's scores -> every request's, on every rank (replicas gather theirs); an identical
        request takes its first copy's value (an exact tie between identical endings stays a tie)."""
        if self.sharding.mesh.dp > 1:
            from graphopt.distributed.data_parallel import gather_everywhere
            loglik, greedy = gather_everywhere(prepared.mine, loglik, greedy, len(prepared.unique),
                                               sends=self.sharding.model_rank == 0)
        position = {u: k for k, u in enumerate(prepared.unique)}
        index = torch.tensor([position[first] for first in prepared.same], dtype=torch.long)
        return loglik[index], (greedy[index] if greedy is not None else None)

    def score(self, requests: Sequence[Request], progress: bool = True, desc: str = "scoring") -> Scores:
        return self.score_prepared(self.prepare(requests), progress, desc)

    def score_prepared(self, prepared: Prepared, progress: bool = True, desc: str = "scoring") -> Scores:
        """setup() if not done yet, then run() + collect(), timed (setup excluded)."""
        if not prepared.requests:
            return Scores(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool) if self.greedy else None)
        if prepared.mine:
            self.setup(prepared)
        sync(self.device)
        start = time.perf_counter()
        loglik, greedy = self.run(prepared, progress, desc)
        loglik, greedy = self.collect(prepared, loglik, greedy)
        sync(self.device)
        return Scores(loglik, greedy, time.perf_counter() - start, prepared.n_batches)
