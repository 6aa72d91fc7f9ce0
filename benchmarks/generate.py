"""The one generation path against Hugging Face's ``generate``, on the same batch.

32 prompts of 16 to 48 tokens, 64 new tokens each, sampled at T=1 with one seed, on the
~20M config-built Llama of ``capture_throughput.py``, in batches of 16 (left padding). Both
run in this process, twice each (the best time counts), and must give the same tokens:
``sampling.generate`` with the ``multinomial`` sampler is seeded per chunk (``seed +
start``), so HF runs each chunk after ``torch.manual_seed(seed + start)``. Last line:
``difflens_s=<a> hf_s=<b> tokens=<n> identical=<0|1> generate_speed_ratio=<hf/difflens>``.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import capture_throughput as ct  # noqa: E402
from difflens.models.batching import pad_batch  # noqa: E402
from difflens.sampling.generate import GenerationConfig, generate, stop_ids  # noqa: E402

N_PROMPTS, NEW, BATCH, SEED = 32, 64, 16, 0


def hf_generate(lm, seqs: list[list[int]]) -> list[list[int]]:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = []
    for start in range(0, len(seqs), BATCH):
        chunk = seqs[start:start + BATCH]
        ids, mask, _ = pad_batch(chunk, "left", lm.device)
        torch.manual_seed(SEED + start)
        with torch.inference_mode():
            gen = lm.model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                    top_k=0, top_p=1.0, max_new_tokens=NEW, pad_token_id=pad)
        # HF stops a row on its generation_config's EOS (and the tokenizer's): cut there
        stops = stop_ids(lm)
        for row in gen[:, ids.shape[1]:].tolist():
            out.append(row[:next((i for i, t in enumerate(row) if t in stops), len(row))])
    return out


def main() -> None:
    torch.set_num_threads(2)
    lm = ct.model_20m()
    rng = np.random.default_rng(0)
    seqs = [lm.tokenizer(" ".join(rng.choice(ct.VOCAB_WORDS, size=int(n))))["input_ids"]
            for n in rng.integers(16, 48, size=N_PROMPTS)]
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, seed=SEED, batch_size=BATCH,
                           sampler="multinomial")
    generate(lm, seqs[:2], GenerationConfig(max_new_tokens=4))  # warm-up
    best = {"difflens": float("inf"), "hf": float("inf")}
    outs: dict[str, list[list[int]]] = {}
    for _ in range(2):
        t0 = time.perf_counter()
        outs["difflens"] = generate(lm, seqs, cfg).token_ids
        best["difflens"] = min(best["difflens"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        outs["hf"] = hf_generate(lm, seqs)
        best["hf"] = min(best["hf"], time.perf_counter() - t0)
    n = sum(len(t) for t in outs["difflens"])
    same = int(outs["difflens"] == outs["hf"])
    for name in ("difflens", "hf"):
        print(f"{name}: {best[name]:.2f} s, {n / best[name]:.0f} tokens/s")
    print(f"difflens_s={best['difflens']:.2f} hf_s={best['hf']:.2f} tokens={n} identical={same} "
          f"generate_speed_ratio={best['hf'] / best['difflens']:.2f}")


if __name__ == "__main__":
    main()
