"""Concept-vector extraction: difflens's batched shared-prefix engine vs a naive loop.

500 synthetic A/B items (a 40-120 word question ending in "Answer:", then " (A)" or
" (B)") on the ~20M config-built Llama of ``capture_throughput.py`` (random weights), all
6 layers. The naive baseline is what a first script does: for every item, two unbatched
forward passes (matching, then non-matching) with ``output_hidden_states=True``, reading
the answer-letter position. difflens runs each item's question once in a batch, reuses its
KV cache for both answers, and asks for logits only where they are needed. Both run in
this process, twice each (interleaved; the best time counts); the states must agree.
Last line: ``naive_s=<a> difflens_s=<b> max_abs_diff=<c> concepts_speedup=<x>``.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import capture_throughput as ct  # noqa: E402
from difflens.capture.contrastive import forward_ab  # noqa: E402
from difflens.inputs.ab_items import ABItem, tokenize_items  # noqa: E402


def items(n: int, seed: int = 0) -> list[ABItem]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(ct.VOCAB_WORDS, size=int(rng.integers(40, 121))))
        m, o = (" (A)", " (B)") if i % 2 else (" (B)", " (A)")
        out.append(ABItem(prompt=q, matching=m, not_matching=o, source=f"synthetic:{i}"))
    return out


def naive(lm, toks) -> torch.Tensor:  # type: ignore[no-untyped-def]
    rows = []
    with torch.inference_mode():
        for t in toks:
            pair = []
            for v in (0, 1):
                out = lm.model(torch.tensor([t.ids[v]]), output_hidden_states=True)
                pair.append(torch.stack([h[0, t.read[v]] for h in out.hidden_states]))
            rows.append(torch.stack(pair))
    return torch.stack(rows)


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    lm = ct.model_20m()
    data = items(500)
    # the word tokenizer has no "(A)"; spell the answers with words it knows
    data = [ABItem(i.prompt, " " + ct.VOCAB_WORDS[1 if "A" in i.matching else 2],
                   " " + ct.VOCAB_WORDS[2 if "A" in i.matching else 1], i.source) for i in data]
    print(f"model: {ct.n_params(lm) / 1e6:.1f}M params, {lm.n_layers} blocks; 500 items")
    toks, _ = tokenize_items(lm.tokenizer, data, "plain", chat=False, position="answer")
    print(f"mean tokens per variant: {np.mean([len(t.ids[0]) for t in toks]):.1f}, "
          f"shared prefix {np.mean([t.shared for t in toks]):.1f}")
    layers = list(range(lm.n_layers + 1))
    forward_ab(lm, toks[:8], layers)  # warm-up
    naive(lm, toks[:4])
    naive_s, ours_s = float("inf"), float("inf")
    for _ in range(2):  # best of two runs each, interleaved, so both see the same machine
        t0 = time.perf_counter()
        ref = naive(lm, toks)
        naive_s = min(naive_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = forward_ab(lm, toks, layers).hidden
        ours_s = min(ours_s, time.perf_counter() - t0)
    diff = float((ref - ours).abs().max())
    print(f"naive loop (2 unbatched passes per item): {naive_s:.2f} s; difflens: {ours_s:.2f} s")
    print(f"naive_s={naive_s:.2f} difflens_s={ours_s:.2f} max_abs_diff={diff:.2e} "
          f"concepts_speedup={naive_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
