"""Capture on the Ray engine against the local engine, in one process, on this machine.

Captures the same prompts with a config-built Llama pair (all layers stored, float16 and
float32) locally and on a local Ray cluster of ``--workers`` actors, checks that the two
stores hold the same bytes (workers run with the local thread count), and measures what the
cost model in docs/scale.md needs:

- ``local_s``, ``ray_s``: wall time of each engine (Ray's includes starting the actors and
  loading the models in each: the fixed cost a cluster pays once per run);
- ``tensor_overhead``: bytes of the safetensors shards over the raw states they hold
  (rows * models * layers * d_model * 2 bytes), minus 1;
- ``stats_bytes_per_token``: the per-token statistics (Parquet, zstd; for a pair, both
  models' entropy, top-k and log-probs and the KL), which a run stores once, not per layer;
- ``store_gb_per_1k_prompts_per_layer_<shape>``: the measured tensor overhead applied to
  real shapes (Llama-3.2-1B d_model 2048, Llama-3.1-8B 4096, Llama-3.3-70B 8192), float16,
  512 tokens per prompt, one model; ``stats_mb_per_1k_prompts``: the stats at 512 tokens.

The last line is ``key=value`` pairs. Usage: python benchmarks/ray_capture.py [--prompts N]
[--workers 2]
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import difflens as dl
from difflens.models.engines import RayEngine
from difflens.models.tiny import word_tokenizer

WORDS = [f"w{i}" for i in range(4092)]
SHAPES = {"1b": 2048, "8b": 4096, "70b": 8192}


def save_pair(root: Path) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(WORDS)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=704,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256)
    out = []
    for seed, name in ((0, "base"), (1, "tuned")):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(root / name)
    return out[0], out[1]


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(k))) for k in rng.integers(16, 129, size=n)]


def files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="difflens-ray-bench-"))
    try:
        base, tuned = save_pair(tmp)
        pair = dl.ModelPair(dl.load_model(base), dl.load_model(tuned))
        texts = prompts(args.prompts)
        kw = dict(layers="all", store_dtype="float16", shard_mb=8, batch_size=16)
        t0 = time.perf_counter()
        local = dl.capture(pair, texts, store=tmp / "local", **kw)
        local_s = time.perf_counter() - t0
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        engine = RayEngine(workers=args.workers, torch_threads=torch.get_num_threads())
        t0 = time.perf_counter()
        remote = dl.capture(pair, texts, store=tmp / "ray", engine=engine, **kw)
        ray_s = time.perf_counter() - t0
        ray.shutdown()
        same = files(local.path) == files(remote.path)
        stored = files(local.path)
        size = sum(len(b) for b in stored.values())
        tensor_bytes = sum(len(b) for f, b in stored.items() if f.startswith("tensors/"))
        stats_bytes = sum(len(b) for f, b in stored.items() if f.startswith("stats/"))
        rows, n_models, n_layers = local.manifest["n_rows"], 2, len(local.layers)
        d_model = pair.base.d_model
        overhead = tensor_bytes / (rows * n_models * n_layers * d_model * 2) - 1
        tokens_per_prompt = local.n_tokens / local.n_prompts
        print(f"prompts={local.n_prompts} tokens={local.n_tokens} shards="
              f"{local.manifest['n_shards']} local_s={local_s:.2f} ray_s={ray_s:.2f} "
              f"workers={args.workers} identical={same} store_mb={size / 2**20:.2f}")
        line = {
            "identical": int(same), "prompts": local.n_prompts,
            "tokens_per_prompt": round(tokens_per_prompt, 1), "workers": args.workers,
            "local_s": round(local_s, 2), "ray_s": round(ray_s, 2),
            "local_tokens_per_s": round(local.n_tokens / local_s),
            "ray_tokens_per_s": round(local.n_tokens / ray_s),
            "d_model": d_model, "tensor_overhead": round(overhead, 5),
            "stats_bytes_per_token": round(stats_bytes / local.n_tokens, 1),
            "stats_mb_per_1k_prompts": round(512_000 * stats_bytes / local.n_tokens / 1e6, 2),
        }
        for name, d in SHAPES.items():
            gb = 1000 * 512 * d * 2 * (1 + overhead) / 1e9
            line[f"store_gb_per_1k_prompts_per_layer_{name}"] = round(gb, 3)
        print(" ".join(f"{k}={v}" for k, v in line.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
