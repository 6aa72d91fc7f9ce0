"""The SmolLM2 divergence run: its sampling one prompt at a time against batched, then the
whole step, in one process.

``difflens collapse divergence --base smollm2-135m-instruct --prompts
../shared/data/trajectories/gptj-vs-ppo-gptj/prompts_and_cont0.jsonl --max-inputs 120``
samples one continuation per prompt (40 tokens, T = 1), then scores the texts and predicts
entropy. Timed here, on the same model and prompts:

- ``loop``: the sampling as difflens ran it before (one ``generate`` call per prompt, batch
  size 1, prompt ``p`` seeded ``seed + 1000 * p``);
- ``batched``: ``capture.cumulative_paths.sample_continuations`` (every prompt in one
  call, ``--batch-size`` rows a batch, each row its own stream with the same seed); the
  continuations must be identical to the loop's (``identical`` is the share that are);
- ``step``: ``run_collapse`` with the divergence step, end to end (sampling, scoring,
  entropy prediction, tables and figures), with the batched sampling.

``sampling_speedup = loop / batched``; ``step_before_s`` is ``step`` with the loop's
sampling time in place of the batched one (what the step cost before, on this machine).

Last line: ``loop_s=.. batched_s=.. sampling_speedup=.. identical=.. step_s=..
step_before_s=.. n_prompts=..``.

Usage: python benchmarks/divergence_real.py [--max-inputs 120] [--batch-size 32]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from difflens.capture.cumulative_paths import sample_continuations
from difflens.inputs.prompts import read_prompts
from difflens.models.loading import load_model
from difflens.pipelines.collapse import CollapseConfig, run_collapse
from difflens.sampling.generate import GenerationConfig, generate

PROMPTS = (Path(__file__).resolve().parents[2] / "shared" / "data" / "trajectories"
           / "gptj-vs-ppo-gptj" / "prompts_and_cont0.jsonl")
NEW, SEED = 40, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-inputs", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model("smollm2-135m-instruct")
    prompts = read_prompts(PROMPTS)[:args.max_inputs]
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
    generate(lm, ids[:2], GenerationConfig(max_new_tokens=4))  # warm-up

    t0 = time.perf_counter()
    loop = [generate(lm, [row], GenerationConfig(
        max_new_tokens=NEW, seed=SEED + 1000 * p, batch_size=1, sampler="multinomial"))
        .token_ids[0] for p, row in enumerate(ids)]
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = [c[0] for c in sample_continuations(lm, ids, 1, NEW, SEED,
                                                  batch_size=args.batch_size)]
    batched_s = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(loop, batched, strict=True)) / len(ids)
    print(f"sampling {len(ids)} x {NEW} tokens: one prompt at a time {loop_s:.1f} s, "
          f"batched ({args.batch_size}) {batched_s:.1f} s, identical {same:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_collapse(lm, prompts, Path(tmp), CollapseConfig(
            steps=("divergence",), batch_size=args.batch_size, max_new_tokens=NEW, seed=SEED))
        step_s = time.perf_counter() - t0
    print(f"the divergence step end to end: {step_s:.1f} s (with one-at-a-time sampling: "
          f"{step_s - batched_s + loop_s:.1f} s)")
    print(f"loop_s={loop_s:.2f} batched_s={batched_s:.2f} "
          f"sampling_speedup={loop_s / batched_s:.2f} identical={same:.3f} "
          f"step_s={step_s:.1f} step_before_s={step_s - batched_s + loop_s:.1f} "
          f"n_prompts={len(ids)}")


if __name__ == "__main__":
    main()
