"""Plan normalization: free-text or markdown plans become validated run phases."""

from shared.plans.normalize import (
    DEFAULT_MIN_CONFIDENCE,
    DetectFn,
    NormalizedPlan,
    ToolchainLike,
    accept,
    normalize_plan,
)
from shared.plans.parse import ParsedPlan, Step, parse_plan

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "DetectFn",
    "NormalizedPlan",
    "ParsedPlan",
    "Step",
    "ToolchainLike",
    "accept",
    "normalize_plan",
    "parse_plan",
]
