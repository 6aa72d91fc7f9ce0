"""Monitoring and control overhead: generation with the monitor, and with the proportional
controller, against plain generation with the same loop and no hook, in one process.

The model is the ~20M config-built Llama of ``capture_throughput.py`` (8 layers, d_model
512); 16 prompts of 32 tokens, 64 new tokens each, sampled with the same seed. The probe
reads layer 4 (random weights, threshold 0.5, so the controller acts on about half the
positions). Each setting runs 3 times, interleaved; the best time counts. ``transformers``'
own ``generate`` is timed as a reference for the loop. Overheads are ratios of seconds per
generated token (a sequence that meets EOS stops early). Last line:
``plain_s=<a> monitor_s=<b> control_s=<c> hf_generate_s=<d> monitor_overhead=<x>
control_overhead=<y>``.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import capture_throughput as ct  # noqa: E402
from difflens.control.monitor import Controller, generate_monitored  # noqa: E402
from difflens.control.state_probe import StateProbe  # noqa: E402
from difflens.models.batching import pad_batch
from difflens.sampling.generate import GenerationConfig  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    lm = ct.model_20m()
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(ct.VOCAB_WORDS, size=31)) for _ in range(16)]
    ident = lm.identity
    probe = StateProbe(weight=torch.randn(lm.d_model) / lm.d_model ** 0.5, bias=0.0, layer=4,
                       threshold=0.5, state_norm=1.0,
                       model={"name": ident.name, "d_model": lm.d_model,
                              "n_layers": lm.n_layers,
                              "tokenizer_sha256": ident.tokenizer_sha256,
                              "weights_sha256": ident.weights_sha256})
    cfg = GenerationConfig(max_new_tokens=64, temperature=1.0, seed=0, batch_size=16)
    settings = {"plain": (None, Controller()), "monitor": (probe, Controller()),
                "control": (probe, Controller("proportional", 0.5))}
    generate_monitored(lm, probe, prompts[:2], config=GenerationConfig(max_new_tokens=4))
    best = dict.fromkeys([*settings, "hf_generate"], float("inf"))
    tokens: dict[str, int] = {}
    seqs = [lm.tokenizer(p)["input_ids"] for p in prompts]
    ids, mask, _ = pad_batch(seqs, "left", lm.device)
    for _ in range(3):
        for name, (p, ctrl) in settings.items():
            t0 = time.perf_counter()
            gen = generate_monitored(lm, p, prompts, controller=ctrl, config=cfg)
            best[name] = min(best[name], time.perf_counter() - t0)
            tokens[name] = gen.n_tokens
        t0 = time.perf_counter()
        with torch.inference_mode():
            lm.model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=64,
                              min_new_tokens=64, pad_token_id=lm.tokenizer.pad_token_id)
        best["hf_generate"] = min(best["hf_generate"], time.perf_counter() - t0)
    for name, secs in best.items():
        n = tokens.get(name, 16 * 64)
        print(f"{name}: {secs:.2f} s, {n} tokens, {n / secs:.0f} tokens/s")
    per = {k: best[k] / tokens.get(k, 16 * 64) for k in best}  # seconds per kept token
    print(f"plain_s={best['plain']:.2f} monitor_s={best['monitor']:.2f} "
          f"control_s={best['control']:.2f} hf_generate_s={best['hf_generate']:.2f} "
          f"monitor_overhead={per['monitor'] / per['plain']:.3f} "
          f"control_overhead={per['control'] / per['plain']:.3f}")


if __name__ == "__main__":
    main()
