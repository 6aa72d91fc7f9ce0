"""GPU check of the collapse instruments: the same calls on CUDA and CPU must agree.

Run on a machine with a GPU: ``PYTHONPATH=src python scripts/gpu_check_collapse.py``.
"""

import copy
import sys
import tempfile

import numpy as np
import torch

from difflens.capture.scoring import continuation_logprobs
from difflens.capture.text_divergence import Corpus, text_divergence
from difflens.models import ModelPair, wrap_model
from difflens.models.tiny import tiny_pair
from difflens.sampling.attractors import attractor_test
from difflens.sampling.tree import probability_tree


def on(device: str, pair: ModelPair) -> ModelPair:
    return ModelPair(*(wrap_model(copy.deepcopy(m.model).to(device), m.tokenizer,
                                  name=m.identity.name) for m in (pair.base, pair.tuned)))


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    cpu = tiny_pair(0, scale=3.0)
    gpu = on("cuda", cpu)
    conts = [" forest", " forest to find", " dark", " the little fox went"]
    a = continuation_logprobs(cpu.tuned, "the fox went to", conts, temperatures=(0.5, 1, 2),
                              boundary=True)
    b = continuation_logprobs(gpu.tuned, "the fox went to", conts, temperatures=(0.5, 1, 2),
                              boundary=True)
    c = continuation_logprobs(gpu.tuned, "the fox went to", conts, temperatures=(0.5, 1, 2),
                              boundary=True, share_prefix=False)
    print(f"scoring cpu vs cuda {np.abs(a - b).max():.2e}; cuda shared vs full "
          f"{np.abs(b - c).max():.2e}")
    ta = probability_tree(cpu.tuned, "the fox went to", depth=3, top_k=4)
    tb = probability_tree(gpu.tuned, "the fox went to", depth=3, top_k=4)
    la, lb = ta.leaves(), tb.leaves()
    same = [x[0] for x in la] == [x[0] for x in lb]
    diff = max(abs(x[1] - y[1]) for x, y in zip(la, lb, strict=True))
    print(f"tree: same paths {same}, max prob diff {diff:.2e}")
    corpus = Corpus(["the fox went to", "once upon a time"],
                    [" the forest to find a friend", " there was a little fox"], ["a", "b"])
    with tempfile.TemporaryDirectory() as d:
        ka = text_divergence(cpu, corpus, store=f"{d}/a").summary()["kl_tuned_base_mean"]["value"]
        kb = text_divergence(gpu, corpus, store=f"{d}/b").summary()["kl_tuned_base_mean"][
            "value"]
    print(f"divergence KL cpu {ka:.6f} cuda {kb:.6f}")
    sa = attractor_test(cpu, ["the fox went to", "once upon a time"], max_new_tokens=16,
                        encoder=None).summary()
    sb = attractor_test(gpu, ["the fox went to", "once upon a time"], max_new_tokens=16,
                        encoder=None).summary()
    print("attractors cpu", {m: round(v["strength"]["value"], 4) for m, v in sa.items()},
          "cuda", {m: round(v["strength"]["value"], 4) for m, v in sb.items()})
    ok = (np.abs(a - b).max() < 1e-4 and np.abs(b - c).max() < 1e-4 and same and diff < 1e-4
          and abs(ka - kb) < 1e-4)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
