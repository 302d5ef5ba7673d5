"""Scoring: HellaSwag rows -> requests -> the Scorer (batches, one optimised runnable) -> per-request
log-likelihoods -> acc / acc_norm."""
from graphopt.scoring.batch import Request, ScoreBatch, ScoreModule, sum_by_owner
from graphopt.scoring.evaluate import evaluate
from graphopt.scoring.metrics import choice_metrics, same_choices
from graphopt.scoring.reference import padded_batches, per_pair_batches, reference_loglik
from graphopt.scoring.requests import build_requests
from graphopt.scoring.score_loop import score_requests
from graphopt.scoring.scorer import Scorer, Scores, auto_pipeline
from graphopt.scoring.strategies import STRATEGIES, build_batches

__all__ = ["evaluate", "build_requests", "build_batches", "score_requests", "choice_metrics", "same_choices",
           "ScoreModule", "ScoreBatch", "Request", "sum_by_owner", "STRATEGIES", "per_pair_batches", "padded_batches",
           "reference_loglik", "Scorer", "Scores", "auto_pipeline"]
