"""Analyses: pure functions over stored runs that return data objects."""

from difflens.analysis.bootstrap import Estimate, bootstrap_ci, mean_ci
from difflens.analysis.divergence import summarize_pair_stats

__all__ = ["Estimate", "bootstrap_ci", "mean_ci", "summarize_pair_stats"]
