"""How much batching can buy on this machine: forward-pass FLOP/s across batch shapes.

Runs the ~20M Llama of ``capture_throughput.py`` (random weights) with no hooks, no
statistics and no I/O, for several (batch, length) shapes, and prints tokens/s and the
fraction of the fp32 matmul rate measured in the same run. The ratio of the best batched
shape to a single ~68-token prompt is the ceiling on any capture speedup over the naive
one-prompt loop here. Last line: ``single_fraction=<x> best_batched_fraction=<y>
batching_ceiling=<z>``.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import capture_throughput as ct  # noqa: E402


def tokens_per_second(model: torch.nn.Module, batch: int, length: int, reps: int = 3) -> float:
    ids = torch.randint(4, 8000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return batch * length * reps / (time.perf_counter() - t0)


def main() -> None:
    rate = ct.matmul_rate()
    lm = ct.model_20m()
    flops_per_token = 2 * ct.n_params(lm)
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s; model {flops_per_token / 2e6:.1f}M params")
    shapes = [(1, 68), (1, 128), (8, 128), (16, 128), (32, 128), (64, 128), (16, 64), (64, 32)]
    fractions = {}
    for b, t in shapes:
        tps = tokens_per_second(lm.model, b, t)
        fractions[(b, t)] = flops_per_token * tps / rate
        print(f"batch {b:3d} x len {t:3d}: {tps:8,.0f} tok/s  fraction {fractions[(b, t)]:.2f}")
    single = fractions[(1, 68)]
    best = max(v for (b, _), v in fractions.items() if b > 1)
    print(f"single_fraction={single:.3f} best_batched_fraction={best:.3f} "
          f"batching_ceiling={best / single:.2f}")


if __name__ == "__main__":
    main()
