"""Generation-side instruments: probability trees of continuations."""

from difflens.sampling.tree import ProbabilityTree, TreeNode, probability_tree

__all__ = ["ProbabilityTree", "TreeNode", "probability_tree"]
