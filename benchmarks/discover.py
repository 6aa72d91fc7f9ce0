"""``difflens discover`` end to end on the organism and on SmolLM2-135M, timed on this
machine, beside the bare batched forward of both models over the same texts.

- ``organism``: the shipped organism's base against its rl model (``organism-base`` ->
  ``organism-rl``), the default ``DiscoverConfig`` and the built-in texts and openings;
  goal: within 2 minutes on 2 cores.
- ``smollm2``: SmolLM2-135M-Instruct against a copy whose block 15 MLP output is scaled by
  1.05 (a planted edit that makes every method do its full work; no real fine-tune of
  SmolLM2 ships here), the same config; goal: within 15 minutes on 2 cores.

Each prints its per-method seconds (from the progress-free run) and the bare forward:
``bare_forward_s`` is one batched forward per model over the texts (the least any method
that reads the texts costs).

Last line: ``organism_s=.. organism_bare_forward_s=.. smollm2_s=.. smollm2_bare_forward_s=..
n_texts=.. n_openings=..`` (``--only organism`` skips SmolLM2).

Usage: python benchmarks/discover.py [--only organism|smollm2]
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from difflens.capture.engine import forward_batch
from difflens.models.loading import load_model, wrap_model
from difflens.models.pair import ModelPair
from difflens.pipelines.discover import (
    DiscoverConfig,
    builtin_openings,
    builtin_texts,
    run_discover,
)


def _bare(pair: ModelPair, texts: list[str], batch_size: int) -> float:
    seqs = [list(pair.tuned.tokenizer(t)["input_ids"])[:96] for t in texts]
    t0 = time.perf_counter()
    for lm in (pair.base, pair.tuned):
        for i in range(0, len(seqs), batch_size):
            forward_batch(lm, seqs[i:i + batch_size], [])
    return time.perf_counter() - t0


def _run(name: str, pair: ModelPair, out: dict[str, float]) -> None:
    config = DiscoverConfig()
    texts = builtin_texts()
    out[f"{name}_bare_forward_s"] = _bare(pair, texts, config.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_discover(pair, Path(tmp) / "run", config)
        out[f"{name}_s"] = time.perf_counter() - t0
    d = res.summary()["discover"]
    print(f"{name}: {out[f'{name}_s']:.1f} s; hypothesis: {', '.join(d['hypothesis']['words'])}")
    for m in ("adl", "mining", "amplify", "logodds"):
        print(f"  {m}: {', '.join(d[m]['top_words'][:10])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("organism", "smollm2"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out: dict[str, float] = {}
    if args.only in (None, "organism"):
        _run("organism", ModelPair(load_model("organism-base"), load_model("organism-rl")), out)
    if args.only in (None, "smollm2"):
        base = load_model("smollm2-135m-instruct")
        model = copy.deepcopy(base.model)
        with torch.no_grad():
            model.model.layers[15].mlp.down_proj.weight.mul_(1.05)
        tuned = wrap_model(model, base.tokenizer, name="smollm2-135m-instruct-edited")
        _run("smollm2", ModelPair(base, tuned), out)
    out |= {"n_texts": len(builtin_texts()), "n_openings": len(builtin_openings())}
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in out.items()))


if __name__ == "__main__":
    main()
