"""Torch-free checking of fine-tuning datasets (chat, prompt/completion and preference JSONL)."""

from engine.formats.checker import DatasetChecker, check_path, iter_examples
from engine.formats.report import BlockingError, DatasetFormat, DatasetReport, DatasetStats, LineError
from engine.formats.rules import detect_format
from engine.formats.verdict import check_method_compat

__all__ = [
    "BlockingError",
    "DatasetChecker",
    "DatasetFormat",
    "DatasetReport",
    "DatasetStats",
    "LineError",
    "check_method_compat",
    "check_path",
    "detect_format",
    "iter_examples",
]
