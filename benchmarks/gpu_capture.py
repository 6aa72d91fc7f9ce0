"""What capture costs over a bare forward pass, at real model shapes, in one process.

Builds randomly initialised (seeded) Llamas of real shapes with ``LlamaConfig``: Llama-3.2-1B
(``1b``) and Llama-3.1-8B (``8b``) in bf16 on CUDA, or a small config (``small``: d 256,
4 layers, vocab 8192) in float32 on a CPU. Every variant runs the same batches of
equal-length prompts (no padding), interleaved round-robin, with warmups; each time is the
median of the repeats, with ``torch.cuda.synchronize()`` around each pass on CUDA.

The variants, each timed over all batches:

- ``bare``: ``lm.model(input_ids, attention_mask, position_ids, use_cache=False)`` on the
  batches padded beforehand, no hooks: the baseline.
- ``1layer``: ``difflens.capture.engine.forward_batch`` (pads, then one forward with scoped
  hooks on the real HF modules) recording one layer (the middle one), and the states copied
  to the store device (CPU) as the engine copies them: the tokens' rows gathered, then
  ``.to("cpu", float32)`` (the default ``store_dtype``). On a CPU the copy is the gather.
- ``1layer_nocopy``: the same without the copy (the states stay on the GPU).
- ``all`` / ``all_nocopy``: the same for all ``n_layers + 1`` captured layers (the input of
  block 0, each block's output, and the LM head's input).
- ``e2e``: ``difflens.capture(lm, prompts, store=..., layers="all")`` end to end, with
  ``batch_size`` and ``max_batch_tokens`` set so it runs the very same batches (checked) and
  ``shard_mb`` set so that each batch is a shard of its own (checked): tokenizing, the
  forward, states to CPU, the per-token statistics, and the safetensors and parquet files
  (fsynced) in a temporary folder. A real capture has many shards, and capture writes a
  shard's files on a writer thread while the next shard runs; with the two batches in one
  shard there would be no next shard for the writing to overlap, so this variant uses a
  shard per batch (the last shard's files are still written after the last forward, inside
  the timing). After one untimed capture (the first capture of a process also imports
  and initialises the Parquet and safetensors writers, which the bare forward never
  pays), each variant is timed once per repeat, alternating, and the median taken.
- ``e2e_1shard``: the same with both batches in one shard (what ``e2e`` was before
  capture overlapped its writes): every file is written after the last forward.

``capture_overhead_<v> = time(<v>) / time(bare) - 1``: the extra time as a fraction, the way
the anchors are quoted (0.12 is "+12%"). The anchors: vllm-lens costs +12% for one layer and
+317% for all 80 layers of Llama-3.3-70B; nnsight's taps keep 96% of vLLM's throughput
(about +4%). Those are other systems on other models; these figures are ours on ours.

``tokens_per_s`` is the throughput of ``all`` (every layer captured and copied); ``mfu`` is
its model FLOP/s over the peak: 2 * (weights of every Linear layer, the LM head included,
tied or not) FLOPs per token, plus attention 4 * n_layers * T * d_model per token (QK^T and
AV over the full T x T scores, PaLM's convention, not halved for the causal mask). The peak
on CUDA is the dense bf16 peak of the detected GPU from a table, or a measured bf16 matmul
rate when the GPU is not in it; on a CPU it is the fp32 matmul rate measured here, before
and after the configs, the higher of the two (a shared CPU drifts; one reading taken while
other jobs ran gave an "mfu" above 1). The
``bare_`` keys give the same for the baseline. The last line holds these keys for the last
config run, and, suffixed ``_<config>``, for the other configs.

Usage: python benchmarks/gpu_capture.py [--config small|1b|8b ...] [--quick] [--out DIR]
(default: 1b, and 8b when the GPU has more than 40 GB, on CUDA; small on a CPU). ``--out``
also writes the last line as DIR/summary.json.
"""

import argparse
import gc
import json
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import difflens as dl
from difflens.capture import plan
from difflens.capture.engine import forward_batch
from difflens.models.batching import accepts, pad_batch
from difflens.models.tiny import word_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
import capture_throughput as ct  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
CONFIGS: dict[str, dict] = {
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=8192,
                  max_position_embeddings=2048, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,  # Llama-3.2-1B
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
               max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
               rope_parameters={**LLAMA3_ROPE, "factor": 32.0}),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,  # Llama-3.1-8B
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
               max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
               rope_parameters={**LLAMA3_ROPE, "factor": 8.0}),
}
# (prompts per batch, tokens per prompt with BOS, batches)
SHAPES = {"small": (8, 128, 2), "1b": (16, 512, 2), "8b": (16, 512, 2)}
# Dense bf16 peaks (FLOP/s, no sparsity), matched in order against the device name.
PEAKS = [(r"H200", 989e12), (r"H100.*PCIe", 756e12), (r"H100", 989e12), (r"A100", 312e12),
         (r"\bL4\b", 121e12)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device) -> tuple[float, str]:
    """The FLOP/s that ``mfu`` divides by, and where it comes from."""
    if device.type != "cuda":
        return ct.matmul_rate(), "measured_fp32_matmul"
    name = torch.cuda.get_device_name(device)
    for pattern, peak in PEAKS:
        if re.search(pattern, name):
            return peak, "table_bf16_dense"
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(10):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t0))
    return best, "measured_bf16_matmul"


def build(config: str, device: torch.device, dtype: torch.dtype) -> dl.LoadedModel:
    """A randomly initialised (seed 0) Llama of ``config``'s shape, built on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = CONFIGS[config]
    tok = word_tokenizer([f"w{i}" for i in range(spec["vocab_size"] - 4)])
    cfg = LlamaConfig(**spec, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()
    return dl.wrap_model(model, tok, name=f"llama-{config}-random")


def prompts_for(config: str, n: int, length: int, seed: int = 0) -> list[str]:
    """n prompts of ``length`` tokens each (BOS included): random words of the vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = CONFIGS[config]["vocab_size"] - 4
    return [" ".join(f"w{i}" for i in rng.integers(0, vocab, size=length - 1))
            for _ in range(n)]


def matmul_params(lm: dl.LoadedModel) -> int:
    """Weights of every Linear layer, the LM head included (a matmul even when tied)."""
    return sum(m.weight.numel() for m in lm.model.modules() if isinstance(m, torch.nn.Linear))


def capture_batches(lm: dl.LoadedModel, prompts: list[str], batch_size: int,
                    max_batch_tokens: int, shard_mb: int) -> list[list[list[int]]]:
    """The token-id batches ``dl.capture(lm, prompts, layers="all", ...)`` runs, in its
    order: the plan's tokenization, shard plan and length-bucketed batches."""
    cfg = plan.CaptureConfig(layers=tuple(range(lm.n_layers + 1)), batch_size=batch_size,
                             max_batch_tokens=max_batch_tokens, shard_mb=shard_mb)
    token_ids, _ = plan.tokenize_prompts(lm, prompts, lm.max_length, cfg.truncate)
    lengths = [len(t) for t in token_ids]
    shards = plan.plan_shards(lengths, len(cfg.layers) * lm.d_model * 4, cfg.shard_mb)
    out = []
    for start, end in shards:
        order = sorted(range(start, end), key=lambda i: (-lengths[i], i))
        out += [[token_ids[i] for i in b] for b in plan.batches_of(lengths, order, cfg)]
    return out


def median_times(fns: dict[str, Callable[[], None]], device: torch.device, reps: int,
                 warmup: int) -> dict[str, float]:
    """Median seconds of each function, run round-robin (so drift hits all alike), each
    round starting one function later (so no function always follows the same one)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for rep in range(warmup + reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            fn = fns[name]
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_config(config: str, device: torch.device, dtype: torch.dtype,
               reps: int, e2e_reps: int) -> dict[str, float]:
    """The overheads, throughputs and achieved model FLOP/s of one config."""
    t0 = time.perf_counter()
    lm = build(config, device, dtype)
    built_s = time.perf_counter() - t0
    batch, length, n_batches = SHAPES[config]
    prompts = prompts_for(config, batch * n_batches, length)
    all_layers = list(range(lm.n_layers + 1))
    one_layer = [lm.n_layers // 2]
    bpr = len(all_layers) * lm.d_model * 4  # float32 bytes per stored token, all layers
    n_tokens = batch * length * n_batches
    e2e_kw = dict(layers="all", batch_size=batch, max_batch_tokens=batch * length,
                  shard_mb=math.ceil(batch * length * bpr / 2**20))  # a shard per batch
    one_shard_kw = {**e2e_kw, "shard_mb": math.ceil(n_tokens * bpr / 2**20) + 1}
    batches = capture_batches(lm, prompts, batch, e2e_kw["max_batch_tokens"],
                              e2e_kw["shard_mb"])
    assert capture_batches(lm, prompts, batch, e2e_kw["max_batch_tokens"],
                           one_shard_kw["shard_mb"]) == batches
    assert [len(b) for b in batches] == [batch] * n_batches, [len(b) for b in batches]
    assert all(len(s) == length for b in batches for s in b)
    assert len(plan.plan_shards([length] * len(prompts), bpr, e2e_kw["shard_mb"])) == n_batches
    assert len(plan.plan_shards([length] * len(prompts), bpr, one_shard_kw["shard_mb"])) == 1
    padded = [pad_batch(seqs, "right", lm.device) for seqs in batches]
    with_pos = accepts(lm.model, "position_ids")

    def bare() -> None:
        with torch.inference_mode():
            for ids, mask, pos in padded:
                kw = {"position_ids": pos} if with_pos else {}
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)

    def captured(layers: list[int], copy: bool) -> Callable[[], None]:
        def run() -> None:
            for seqs in batches:
                res = forward_batch(lm, seqs, layers)
                if copy:  # as engine._run_shard moves states into its CPU store buffers
                    src = res.flat_rows([range(len(s)) for s in seqs])
                    with torch.inference_mode():
                        for layer in layers:
                            h = res.hidden[layer]
                            h.reshape(-1, h.shape[-1]).index_select(0, src).to(
                                "cpu", torch.float32)
                del res
        return run

    with torch.inference_mode():  # hooks change nothing: the logits must agree
        kw = {"position_ids": padded[0][2]} if with_pos else {}
        ref = lm.model(input_ids=padded[0][0], attention_mask=padded[0][1], use_cache=False,
                       **kw).logits
        got = forward_batch(lm, batches[0], all_layers).logits
        max_diff = float((ref.float() - got.float()).abs().max())
        del ref, got

    fns = {"bare": bare, "1layer": captured(one_layer, True),
           "1layer_nocopy": captured(one_layer, False), "all": captured(all_layers, True),
           "all_nocopy": captured(all_layers, False)}
    warmup = 2 if device.type == "cuda" else 1
    t = median_times(fns, device, reps, warmup)

    e2e_times: dict[str, list[float]] = {"e2e": [], "e2e_1shard": []}
    variants = [("e2e", e2e_kw), ("e2e_1shard", one_shard_kw)]
    for rep in range(e2e_reps + 1):  # the first round is the warmup; then alternate
        for name, kw in variants if rep % 2 == 0 else variants[::-1]:
            root = Path(tempfile.mkdtemp(prefix="difflens-gpu-capture-"))
            try:
                sync(device)
                t_start = time.perf_counter()
                store = dl.capture(lm, prompts, store=root / "run", **kw)
                sync(device)
                if rep:
                    e2e_times[name].append(time.perf_counter() - t_start)
                assert store.n_tokens == n_tokens, (store.n_tokens, n_tokens)
                assert store.manifest["n_shards"] == (n_batches if name == "e2e" else 1)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    t |= {name: statistics.median(v) for name, v in e2e_times.items()}

    P = matmul_params(lm)
    flops_per_token = 2 * P + 4 * lm.n_layers * length * lm.d_model
    tps = {k: n_tokens / v for k, v in t.items()}
    res = {f"capture_overhead_{k}": t[k] / t["bare"] - 1 for k in t if k != "bare"}
    res |= {"tokens_per_s": tps["all"], "model_flops_s": flops_per_token * tps["all"],
            "bare_tokens_per_s": tps["bare"], "bare_model_flops_s": flops_per_token * tps["bare"],
            "e2e_tokens_per_s": tps["e2e"], "max_logit_diff": max_diff}
    print(f"{config}: {P / 1e9:.3f}B matmul params, {lm.n_layers} layers, d {lm.d_model}, "
          f"{n_batches} batches x {batch} x {length} tokens, {dtype}, built in {built_s:.1f} s "
          f"| bare {t['bare'] * 1e3:.1f} ms ({tps['bare']:,.0f} tok/s, "
          f"{res['bare_model_flops_s'] / 1e12:.3g} TFLOP/s) | max logit diff with hooks "
          f"{max_diff:.3g}")
    for k in [*fns][1:] + ["e2e", "e2e_1shard"]:
        print(f"  {k:14s} {t[k] * 1e3:9.1f} ms  {tps[k]:12,.0f} tok/s  "
              f"overhead {res[f'capture_overhead_{k}']:+.1%}")
    return res


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.4g}"


def _number(text: str) -> int | float:
    """As scripts/render_results.py --bench reads a value: an int if it is one."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS),
                    help="repeatable; default: 1b (+ 8b above 40 GB) on CUDA, small on CPU")
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats and 1 end-to-end capture; on CUDA, 1b only by default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, help="also write the last line as OUT/summary.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        dtype, gpu_gb = torch.bfloat16, torch.cuda.get_device_properties(device).total_memory / 1e9
        name = torch.cuda.get_device_name(device)
        configs = args.config or (["1b"] + (["8b"] if gpu_gb > 40 and not args.quick else []))
    else:
        dtype, name = torch.float32, f"cpu-{torch.get_num_threads()}threads"
        configs = args.config or ["small"]
    reps = 3 if args.quick else 5
    e2e_reps = 1 if args.quick else 3
    peak, source = peak_flops(device)
    print(f"device {name}, {dtype}; peak {peak / 1e12:.3g} TFLOP/s ({source}); "
          f"configs {configs}; {reps} repeats (median), {e2e_reps} end-to-end", flush=True)
    raw = {}
    for c in configs:
        try:
            raw[c] = run_config(c, device, dtype, reps, e2e_reps)
        except torch.OutOfMemoryError as exc:  # report the configs that fit
            print(f"{c}: out of memory ({str(exc).splitlines()[0]}); skipped")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the model of this config is gone; free it for the next
    if not raw:
        raise SystemExit("no config fitted in memory")
    configs = list(raw)
    if source.startswith("measured_fp32"):
        after, _ = peak_flops(device)
        print(f"fp32 matmul rate before {peak / 1e9:.1f}, after {after / 1e9:.1f} GFLOP/s; "
              f"the higher is the peak")
        peak = max(peak, after)
    results = {}
    for c, r in raw.items():
        results[c] = {k: v for k, v in r.items() if not k.endswith("model_flops_s")}
        results[c] |= {"mfu": r["model_flops_s"] / peak, "bare_mfu": r["bare_model_flops_s"] / peak}
        print(f"  {c}: " + " ".join(f"{k}={_fmt(v)}" for k, v in results[c].items()))
    head = configs[-1]
    line = {"config": head, "device": re.sub(r"[^A-Za-z0-9._-]+", "_", name),
            "dtype": str(dtype).removeprefix("torch."), "peak_tflops": peak / 1e12,
            "peak_source": source, **results[head]}
    for c in configs[:-1]:
        line |= {f"{k}_{c}": v for k, v in results[c].items()}
    text = " ".join(f"{k}={v if isinstance(v, str) else _fmt(v)}" for k, v in line.items())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {k: v if isinstance(v, str) else _number(_fmt(v)) for k, v in line.items()}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
