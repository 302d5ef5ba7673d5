"""HellaSwag data: local files (datasets directory, parquet, jsonl) or the synthetic embedded default,
formatted exactly as lm-evaluation-harness does."""
from graphopt.data.hellaswag import HellaSwagRow, format_row, load_hellaswag, preprocess
from graphopt.data.synthetic import synthetic_hellaswag

__all__ = ["HellaSwagRow", "format_row", "load_hellaswag", "preprocess", "synthetic_hellaswag"]
