"""Analyses: pure functions over stored runs that return data objects."""

from difflens.analysis.divergence import bootstrap_ci, mean_ci, summarize_pair_stats

__all__ = ["bootstrap_ci", "mean_ci", "summarize_pair_stats"]
