"""HellaSwag data: local files (datasets directory, parquet, jsonl), the synthetic embedded default, or
real prose from Python's own documentation in HellaSwag's format; formatted exactly as
lm-evaluation-harness does."""
from graphopt.data.hellaswag import HellaSwagRow, format_row, preprocess, write_hellaswag_jsonl
from graphopt.data.load import load_hellaswag
from graphopt.data.real_text import real_text_hellaswag, real_text_raw, write_real_text_jsonl
from graphopt.data.synthetic import synthetic_hellaswag

__all__ = ["HellaSwagRow", "format_row", "load_hellaswag", "preprocess", "real_text_hellaswag", "real_text_raw",
           "synthetic_hellaswag", "write_hellaswag_jsonl", "write_real_text_jsonl"]
