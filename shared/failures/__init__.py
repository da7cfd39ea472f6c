"""Failure classification, error normalization and signatures (stdlib only)."""

from shared.failures.classify import FailureClass, FailureInfo, classify_failure
from shared.failures.normalize import (
    classify_error_type,
    compute_signature,
    confidence_for_count,
    extract_error_lines,
    normalize_error_message,
    split_output_lines,
    strip_ansi,
    suggest_pattern_id,
)

__all__ = [
    "FailureClass",
    "FailureInfo",
    "classify_error_type",
    "classify_failure",
    "compute_signature",
    "confidence_for_count",
    "extract_error_lines",
    "normalize_error_message",
    "split_output_lines",
    "strip_ansi",
    "suggest_pattern_id",
]
