"""Probability trees of continuations (the "block multiverse"), extended from KV caches.

From a prompt, ``probability_tree`` expands the ``top_k`` most likely next tokens of
every node, level by level, down to ``depth``, skipping nodes whose sequence probability
falls below ``min_prob``. The prompt runs once; each level is one batched forward pass of
one token per node on top of its parent's cached keys and values (the cache rows are
gathered by parent), so no prefix is ever recomputed. ``reuse_cache=False`` recomputes every
node's whole prefix instead (the baseline of ``benchmarks/tree.py``).
"""

import dataclasses
from typing import Any

import torch

from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.sampling.backend import backend_for


@dataclasses.dataclass
class TreeNode:
    """One node: the token that led here and the probabilities of the sequence so far."""

    token_id: int
    text: str
    prob: float
    """P(this token | the path above it)."""
    seq_prob: float
    """P(the whole path from the prompt to here)."""
    depth: int
    children: list["TreeNode"] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "text": self.text, "prob": self.prob,
                "seq_prob": self.seq_prob, "depth": self.depth,
                "children": [c.to_dict() for c in self.children]}


@dataclasses.dataclass(frozen=True)
class ProbabilityTree:
    prompt: str
    root: TreeNode
    """The prompt (token_id -1); its children are the first continuation tokens."""
    depth: int
    top_k: int
    min_prob: float
    n_nodes: int
    n_forward_tokens: int
    """Tokens the model processed to build the tree (the cost)."""

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "depth": self.depth, "top_k": self.top_k,
                "min_prob": self.min_prob, "n_nodes": self.n_nodes,
                "n_forward_tokens": self.n_forward_tokens, "root": self.root.to_dict()}

    def leaves(self) -> list[tuple[list[int], float]]:
        """(token ids of the path, sequence probability) of every leaf."""
        out: list[tuple[list[int], float]] = []

        def walk(node: TreeNode, path: list[int]) -> None:
            if not node.children:
                out.append((path, node.seq_prob))
            for c in node.children:
                walk(c, path + [c.token_id])

        walk(self.root, [])
        return out


def probability_tree(lm: LoadedModel, prompt: str, *, depth: int = 4, top_k: int = 5,
                     min_prob: float = 1e-3, reuse_cache: bool = True) -> ProbabilityTree:
    """Expand the top-``top_k`` children of every node down to ``depth``.

    Args:
        lm: the model (not changed).
        prompt: the text to continue (tokenized with the model's special tokens).
        depth: levels below the prompt.
        top_k: children per node.
        min_prob: nodes whose sequence probability is below this are kept as leaves and
            not expanded.
        reuse_cache: extend each level from the parents' KV caches (default) or recompute
            every prefix (for comparison; the probabilities agree to float precision).
    """
    if depth < 1 or top_k < 1 or not 0.0 <= min_prob < 1.0:
        raise InputError(f"need depth >= 1, top_k >= 1 and 0 <= min_prob < 1; got depth "
                         f"{depth}, top_k {top_k}, min_prob {min_prob}")
    tok = lm.tokenizer
    ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        raise InputError("the prompt tokenizes to nothing")
    dev = lm.device
    root = TreeNode(token_id=-1, text=prompt, prob=1.0, seq_prob=1.0, depth=0)
    n_nodes, n_tokens = 0, len(ids)
    with torch.inference_mode():
        engine = backend_for(lm) if reuse_cache else None
        first = torch.tensor([ids], device=dev)
        if engine is not None:
            last = engine.prefill(first, torch.ones_like(first),
                                  torch.arange(len(ids), device=dev)[None])
        else:
            last = lm.model(input_ids=first, use_cache=False).logits[:, -1]
        logp = torch.log_softmax(last.double(), -1)
        frontier: list[tuple[TreeNode, list[int]]] = [(root, [])]
        for level in range(1, depth + 1):
            children, parents = [], []
            for row, (node, path) in enumerate(frontier):
                lp, top = logp[row].topk(top_k)
                # A token's text is what it adds to its path's text (SentencePiece drops a
                # lone token's leading space, so decoding it alone would glue words).
                said = tok.decode(ids + path)
                for p, t in zip(lp.exp().tolist(), top.tolist(), strict=True):
                    text = tok.decode(ids + path + [t])
                    child = TreeNode(token_id=t, text=text[len(said):] if text.startswith(said)
                                     else tok.decode([t]), prob=p,
                                     seq_prob=node.seq_prob * p, depth=level)
                    node.children.append(child)
                    n_nodes += 1
                    if child.seq_prob >= min_prob:
                        children.append((child, path + [t]))
                        parents.append(row)
            if level == depth or not children:
                break
            new_tokens = torch.tensor([[path[-1]] for _, path in children], device=dev)
            if engine is not None:
                engine.select_rows(torch.tensor(parents, device=dev))
                past = len(ids) + level - 1
                last = engine.step(new_tokens, torch.ones(len(children), past + 1,
                                                          dtype=torch.long, device=dev),
                                   torch.full((len(children), 1), past, device=dev))
                n_tokens += len(children)
            else:
                full = torch.tensor([ids + path for _, path in children], device=dev)
                last = lm.model(input_ids=full, use_cache=False).logits[:, -1]
                n_tokens += full.numel()
            logp = torch.log_softmax(last.double(), -1)
            frontier = children
    return ProbabilityTree(prompt=prompt, root=root, depth=depth, top_k=top_k,
                           min_prob=min_prob, n_nodes=n_nodes, n_forward_tokens=n_tokens)
