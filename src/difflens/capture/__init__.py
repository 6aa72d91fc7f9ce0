"""Capture: batched forward passes with scoped hooks, and the on-disk run store."""

from difflens.capture.engine import capture, forward_batch
from difflens.capture.plan import CaptureConfig
from difflens.capture.stats import PairStats, TokenStats, pair_stats, token_stats
from difflens.capture.store import RunStore
from difflens.inputs.prompts import read_prompts
from difflens.models.hooks import record_layers
from difflens.models.layers import parse_layers

__all__ = [
    "CaptureConfig",
    "PairStats",
    "RunStore",
    "TokenStats",
    "capture",
    "forward_batch",
    "pair_stats",
    "parse_layers",
    "read_prompts",
    "record_layers",
    "token_stats",
]
