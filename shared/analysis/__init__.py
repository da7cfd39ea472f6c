"""Analyses over recorded failures: grouping uncaught errors and scaffolding patterns for them."""

from shared.analysis.patterns import PatternGroup, PatternSample, analyze_uncaught, group_signature
from shared.analysis.scaffold import (
    detection_regex,
    pattern_class_name,
    scaffold_patterns,
)

__all__ = [
    "PatternGroup",
    "PatternSample",
    "analyze_uncaught",
    "detection_regex",
    "group_signature",
    "pattern_class_name",
    "scaffold_patterns",
]
