"""Probability trees: exact probabilities from KV-cache extension, pruning, bad input."""

import math

import pytest
import torch

from difflens.capture.scoring import score_continuations
from difflens.errors import InputError
from difflens.sampling.tree import probability_tree


def test_tree_probabilities_match_direct_scoring_and_the_recomputed_tree(tiny):
    tree = probability_tree(tiny, "the fox went to", depth=3, top_k=4, min_prob=0.0)
    assert tree.n_nodes == 4 + 16 + 64
    leaves = tree.leaves()
    assert len(leaves) == 64
    ids = tiny.tokenizer("the fox went to")["input_ids"]
    with torch.no_grad():
        for path, p in leaves[:10]:
            logits = tiny.model(torch.tensor([ids + path])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            direct = sum(float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(path))
            assert math.log(p) == pytest.approx(direct, abs=1e-5)
    texts = [" " + " ".join(tiny.tokenizer.convert_ids_to_tokens(path)) for path, _ in leaves[:5]]
    scored = score_continuations(tiny, "the fox went to", texts)
    for (_, p), s in zip(leaves[:5], scored, strict=True):
        assert math.log(p) == pytest.approx(s, abs=1e-5)
    naive = probability_tree(tiny, "the fox went to", depth=3, top_k=4, min_prob=0.0,
                             reuse_cache=False)
    for (pa, a), (pb, b) in zip(leaves, naive.leaves(), strict=True):
        assert pa == pb and a == pytest.approx(b, rel=1e-6)
    assert naive.n_forward_tokens > tree.n_forward_tokens


def test_children_are_the_top_k_and_sum_to_at_most_one(tiny):
    tree = probability_tree(tiny, "once upon a time", depth=2, top_k=3, min_prob=0.0)
    ids = tiny.tokenizer("once upon a time")["input_ids"]
    with torch.no_grad():
        p = torch.softmax(tiny.model(torch.tensor([ids])).logits[0, -1].double(), -1)
    top = p.topk(3)
    assert [c.token_id for c in tree.root.children] == top.indices.tolist()
    assert [c.prob for c in tree.root.children] == pytest.approx(top.values.tolist())
    for c in tree.root.children:
        assert sum(g.prob for g in c.children) <= 1.0 + 1e-12
        assert all(g.seq_prob == pytest.approx(c.seq_prob * g.prob) for g in c.children)
    d = tree.to_dict()
    assert d["root"]["children"][0]["children"][0]["depth"] == 2


def test_pruning_stops_expanding_improbable_nodes(tiny):
    full = probability_tree(tiny, "the fox", depth=3, top_k=3, min_prob=0.0)
    pruned = probability_tree(tiny, "the fox", depth=3, top_k=3, min_prob=0.02)
    assert pruned.n_nodes < full.n_nodes

    def check(node):
        for c in node.children:
            if c.children:
                assert c.seq_prob >= 0.02
            check(c)

    check(pruned.root)
    with pytest.raises(InputError, match="need depth >= 1"):
        probability_tree(tiny, "the fox", depth=0)


def test_tree_summary_reads_the_most_likely_path_and_the_leaf_entropy(tiny):
    from difflens.analysis.tree_summary import tree_summary

    tree = probability_tree(tiny, "the fox went to", depth=2, top_k=3, min_prob=0.0)
    s = tree_summary(tree)
    # independent: walk the nodes by hand
    leaves = [(a, b) for a in tree.root.children for b in a.children]
    probs = [b.seq_prob for _, b in leaves]
    a, b = leaves[max(range(len(leaves)), key=probs.__getitem__)]
    assert s["top_path"] == a.text + b.text and s["top_path_prob"] == max(probs)
    assert s["n_leaves"] == 9 and s["n_nodes"] == tree.n_nodes == 3 + 9
    assert s["covered_mass"] == pytest.approx(sum(probs))
    q = [p / sum(probs) for p in probs]
    assert s["leaf_entropy_bits"] == pytest.approx(-sum(x * math.log2(x) for x in q))
    assert s["n_forward_tokens"] == tree.n_forward_tokens
