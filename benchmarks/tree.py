"""Probability tree: KV-cache extension vs recomputing every prefix.

Depth 4, top-5 children, no pruning (5 + 25 + 125 + 625 nodes; the last level needs no
forward pass), from a 64-token prompt, on the ~20M config-built Llama of
``capture_throughput.py``. Both trees are built in this process, twice each (the best
time counts), and their leaf probabilities must agree. Last line: ``cached_s=<a>
naive_s=<b> max_rel_diff=<c> tree_speedup=<x>``.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import capture_throughput as ct  # noqa: E402
from difflens.sampling.tree import probability_tree  # noqa: E402


def main() -> None:
    lm = ct.model_20m()
    rng = np.random.default_rng(0)
    prompt = " ".join(rng.choice(ct.VOCAB_WORDS, size=63))
    probability_tree(lm, prompt, depth=2, top_k=2)  # warm-up
    best = {True: float("inf"), False: float("inf")}
    trees = {}
    for _ in range(2):
        for reuse in (False, True):
            t0 = time.perf_counter()
            trees[reuse] = probability_tree(lm, prompt, depth=4, top_k=5, min_prob=0.0,
                                            reuse_cache=reuse)
            best[reuse] = min(best[reuse], time.perf_counter() - t0)
    a = np.array([p for _, p in trees[True].leaves()])
    b = np.array([p for _, p in trees[False].leaves()])
    diff = float(np.max(np.abs(a - b) / b))
    for reuse, name in ((True, "KV-cache reuse"), (False, "prefix recomputation")):
        print(f"{name}: {best[reuse]:.2f} s, {trees[reuse].n_forward_tokens:,} tokens processed, "
              f"{trees[reuse].n_nodes} nodes")
    print(f"cached_s={best[True]:.2f} naive_s={best[False]:.2f} max_rel_diff={diff:.1e} "
          f"tree_speedup={best[False] / best[True]:.1f}")


if __name__ == "__main__":
    main()
