"""Capture throughput against a naive baseline, in one process, on this machine.

Prints, for stories260k (if the shared data is present) and a config-built ~20M Llama:
tokens/s of ``difflens.capture`` (all layers to the store, with per-token statistics),
tokens/s of a naive loop (one prompt at a time, ``output_hidden_states=True``, the same
layers kept in memory), tokens/s of a bare batched forward (``lm.model`` with no hooks, no
statistics and no I/O) over exactly the padded batches ``capture`` runs, the achieved
FLOP/s (2 * params * tokens/s) as a fraction of the fp32 matmul rate measured here, and
peak RSS for 512 vs 2048 prompts (each in a fresh subprocess). The last line is
``capture_speedup=<x> flops_fraction=<y> rss_ratio=<z> capture_overhead=<r>`` for the 20M
model, where ``capture_overhead`` is a ratio: the seconds of ``capture`` (all layers
stored) divided by the seconds of the bare batched forward of the same batches (1.0 would
be free; 1.8 means capture takes 80% longer than the forward alone).

Usage: python benchmarks/capture_throughput.py [--prompts 512] [--quick]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import difflens as dl
from difflens.capture import engine
from difflens.models.batching import accepts, pad_batch
from difflens.models.tiny import word_tokenizer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "models" / "stories260k"
VOCAB_WORDS = [f"w{i}" for i in range(8188)]  # + 4 specials = 8192


def matmul_rate(n: int = 1024, seconds: float = 3.0) -> float:
    """Sustained fp32 matmul FLOP/s on this machine (best of repeated n x n products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def model_20m() -> dl.LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(VOCAB_WORDS)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1408,
                      num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    return dl.wrap_model(LlamaForCausalLM(cfg).eval(), tok, name="llama-20m-random")


def prompts_for(lm: dl.LoadedModel, n: int, seed: int = 0) -> list[str]:
    """n prompts of 8..128 tokens (with BOS), lengths uniform."""
    rng = np.random.default_rng(seed)
    if lm.identity.name == "llama-20m-random":
        return [" ".join(rng.choice(VOCAB_WORDS, size=int(k) - 1))
                for k in rng.integers(8, 129, size=n)]
    words = ("Once upon a time there was a little girl named Lily who loved to play in the "
             "park with her big red ball and her friend Tom the happy dog ran after the cat"
             ).split()
    out = []
    for k in rng.integers(8, 129, size=n):
        text = " ".join(rng.choice(words, size=int(k)))
        ids = lm.tokenizer(text)["input_ids"][: int(k)]
        out.append(lm.tokenizer.decode(ids, skip_special_tokens=True))
    return out


def n_params(lm: dl.LoadedModel) -> int:
    seen, total = set(), 0
    for p in lm.model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def naive(lm: dl.LoadedModel, prompts: list[str]) -> tuple[float, int]:
    kept, tokens = [], 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = lm.tokenizer(p, return_tensors="pt")
            out = lm.model(**ids, output_hidden_states=True)
            kept.append([h[0].clone() for h in out.hidden_states])
            tokens += ids["input_ids"].shape[1]
    return time.perf_counter() - t0, tokens


def run_capture(lm: dl.LoadedModel, prompts: list[str], batch_size: int) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="difflens-bench-"))
    try:
        t0 = time.perf_counter()
        store = dl.capture(lm, prompts, store=out / "run", batch_size=batch_size)
        return time.perf_counter() - t0, store.n_tokens
    finally:
        shutil.rmtree(out, ignore_errors=True)


def capture_batches(lm: dl.LoadedModel, prompts: list[str], batch_size: int,
                    max_batch_tokens: int | None = None,
                    shard_mb: int = 128) -> list[list[list[int]]]:
    """The token-id batches ``dl.capture(lm, prompts, layers="all", batch_size=...,
    max_batch_tokens=..., shard_mb=...)`` runs, in its order: the engine's tokenization,
    shard plan and length-bucketed batching (``engine._tokenize``, ``_plan_shards``,
    ``_batches``), with its default ``max_batch_tokens``."""
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    if max_batch_tokens is None:  # capture's default, sized to the vocabulary
        max_batch_tokens = max(64, min(2048, 2**30 // (4 * vocab * 2)))
    cfg = engine.CaptureConfig(layers=tuple(range(lm.n_layers + 1)), batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, shard_mb=shard_mb)
    token_ids, _ = engine._tokenize(lm, prompts, lm.max_length, cfg.truncate)
    lengths = [len(t) for t in token_ids]
    plan = engine._plan_shards(lengths, len(cfg.layers) * lm.d_model * 4, cfg.shard_mb)
    out = []
    for start, end in plan:
        order = sorted(range(start, end), key=lambda i: (-lengths[i], i))
        out += [[token_ids[i] for i in b] for b in engine._batches(lengths, order, cfg)]
    return out


def bare_forward(lm: dl.LoadedModel, batches: list[list[list[int]]]) -> tuple[float, int]:
    """Seconds and tokens of ``lm.model`` alone (no hooks, no statistics, no I/O) over
    ``batches``, padded on the right as ``capture`` pads them (padding outside the clock)."""
    padded = [pad_batch(seqs, "right", lm.device) for seqs in batches]
    with_pos = accepts(lm.model, "position_ids")
    with torch.inference_mode():
        t0 = time.perf_counter()
        for ids, mask, pos in padded:
            kw = {"position_ids": pos} if with_pos else {}
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
        seconds = time.perf_counter() - t0
    return seconds, sum(len(s) for seqs in batches for s in seqs)


def peak_rss_child(n_prompts: int) -> float:
    """Peak RSS (MB) of a fresh process that captures n_prompts with the 20M model."""
    code = (
        f"import sys, resource; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import capture_throughput as b; lm = b.model_20m(); "
        f"b.run_capture(lm, b.prompts_for(lm, {n_prompts}), 64); "
        f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="64 prompts, skip the RSS runs")
    args = ap.parse_args()
    n = 64 if args.quick else args.prompts
    torch.manual_seed(0)
    rate = matmul_rate()
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    models = []
    if (SHARED / "config.json").is_file():
        models.append(dl.load_model(SHARED, device="cpu"))
    else:
        print(f"stories260k not found at {SHARED}; skipping it")
    models.append(model_20m())
    results = {}
    for lm in models:
        prompts = prompts_for(lm, n)
        P = n_params(lm)
        t_naive, tok = naive(lm, prompts)
        t_cap, tok_c = run_capture(lm, prompts, args.batch_size)
        t_bare, tok_b = bare_forward(lm, capture_batches(lm, prompts, args.batch_size))
        assert tok == tok_c == tok_b, (tok, tok_c, tok_b)
        cap_tps, naive_tps, bare_tps = tok / t_cap, tok / t_naive, tok / t_bare
        frac = 2 * P * cap_tps / rate
        results[lm.identity.name] = (cap_tps, naive_tps, frac, t_cap / t_bare)
        print(f"{lm.identity.name}: {P / 1e6:.2f}M params, {n} prompts, {tok} tokens | "
              f"capture {cap_tps:,.0f} tok/s | naive {naive_tps:,.0f} tok/s | "
              f"bare batched forward {bare_tps:,.0f} tok/s | "
              f"speedup {cap_tps / naive_tps:.2f}x | capture/bare {t_cap / t_bare:.2f} | "
              f"flops_fraction {frac:.3f} (naive {2 * P * naive_tps / rate:.3f}, "
              f"bare {2 * P * bare_tps / rate:.3f})")
    if args.quick:
        rss_ratio = float("nan")
    else:
        small, large = peak_rss_child(512), peak_rss_child(2048)
        rss_ratio = large / small
        print(f"peak RSS, 20M model: {small:.0f} MB for 512 prompts, {large:.0f} MB for 2048 "
              f"prompts (ratio {rss_ratio:.2f})")
    cap_tps, naive_tps, frac, overhead = results["llama-20m-random"]
    print(json.dumps({"matmul_gflops": round(rate / 1e9, 1)}))
    print(f"capture_speedup={cap_tps / naive_tps:.2f} flops_fraction={frac:.3f} "
          f"rss_ratio={rss_ratio:.2f} capture_overhead={overhead:.2f}")


if __name__ == "__main__":
    main()
