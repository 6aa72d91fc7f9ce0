"""A narrow fine-tune of a real base model, for ``difflens discover`` to find: full
fine-tuning of a causal LM folder on one zoo organism's narrow documents (``organism.zoo``),
seeded, with the organism's training loop (``organism.training``).

The default is stories260k (Karpathy's TinyStories model, 260K parameters) tuned on the
``domain`` organism's stories by the sea: a few minutes on 2 CPU cores. The tuned folder
goes to ``--out`` (default under the difflens cache, never the repository), with
``finetune.jsonl`` (the documents) and ``finetune.json`` (the recipe, losses and seconds).

Usage:
    python scripts/narrow_finetune.py [--model ../shared/data/models/stories260k]
        [--organism domain] [--docs 600] [--steps 300] [--lr 1e-3] [--seed 0] [--out DIR]
"""

import argparse
import json
import time
from pathlib import Path

import torch

from difflens.models.presets import cache_dir, quiet_transformers
from difflens.organism.training import _train_lm, token_blocks
from difflens.organism.zoo import zoo_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "data" / "models" /
                                           "stories260k"))
    ap.add_argument("--organism", default="domain")
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = zoo_spec(args.organism)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir}: no model folder (config.json) there; give --model")
    out = args.out or cache_dir() / "narrow" / f"{model_dir.name}-{spec.name}-s{args.seed}"
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    docs = spec.documents(args.docs, args.seed)
    blocks = token_blocks(tok, docs, args.seq_len)
    losses = _train_lm(model, blocks, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                       seed=args.seed, advance=lambda n, msg: None)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out)
        tok.save_pretrained(out)
    (out / "finetune.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    seconds = time.perf_counter() - t0
    (out / "finetune.json").write_text(json.dumps({
        "base": str(model_dir), "organism": spec.name, "description": spec.description,
        "planted_words": list(spec.planted_words), "docs": args.docs, "steps": args.steps,
        "lr": args.lr, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "seed": args.seed, "train_tokens": int(blocks.numel()), "first_loss": losses[0],
        "last_loss": losses[-1], "seconds": seconds,
        "torch_threads": torch.get_num_threads()}, indent=2) + "\n")
    print(f"tuned {model_dir.name} on {args.docs} {spec.name} documents in {seconds:.0f} s "
          f"(loss {losses[0]:.2f} -> {losses[-1]:.2f}); wrote {out}")


if __name__ == "__main__":
    main()
