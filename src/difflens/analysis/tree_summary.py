"""What a probability tree of continuations says in a few numbers: its size, its most
likely path, the probability mass it covers and the entropy of its leaves.

The tree is read through the small protocols below (what
``ProbabilityTree`` has), so this needs none of the code that
builds a tree from a model.
"""

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Node(Protocol):
    """A node of a tree: the token that led to it, its text and its children."""

    @property
    def token_id(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def children(self) -> Sequence["Node"]: ...


@runtime_checkable
class Tree(Protocol):
    """A probability tree: its root (the prompt), size, cost and leaves."""

    @property
    def root(self) -> Node: ...

    @property
    def n_nodes(self) -> int: ...

    @property
    def n_forward_tokens(self) -> int: ...

    def leaves(self) -> list[tuple[list[int], float]]: ...


def tree_summary(tree: Tree) -> dict[str, Any]:
    """``{n_nodes, n_leaves, top_path, top_path_prob, covered_mass, leaf_entropy_bits,
    n_forward_tokens}``: ``top_path`` is the text of the most likely leaf's path,
    ``covered_mass`` the leaves' total probability, and ``leaf_entropy_bits`` the entropy of
    the leaves' probabilities renormalised over that mass."""
    leaves = tree.leaves()
    path, prob = max(leaves, key=lambda x: x[1])
    node, texts = tree.root, []
    for t in path:
        node = next(c for c in node.children if c.token_id == t)
        texts.append(node.text)
    mass = float(sum(p for _, p in leaves))
    probs = np.array([p for _, p in leaves]) / mass
    return {"n_nodes": tree.n_nodes, "n_leaves": len(leaves), "top_path": "".join(texts),
            "top_path_prob": float(prob), "covered_mass": mass,
            "leaf_entropy_bits": float(-(probs * np.log2(probs)).sum()),
            "n_forward_tokens": tree.n_forward_tokens}
