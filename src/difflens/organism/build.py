"""Building the model organism: a tiny base LM and its tuned lineage, on CPU, in minutes.

Why one long module: the build is one reproducible recipe (tokenizer, base training, RL,
measurements) keyed by one config; reading it top to bottom is reading the recipe.

1. Generate the story world's corpus (seeded) and train a byte-level BPE tokenizer on it.
2. Train a ~1M-parameter Llama from scratch on it (next-token loss, AdamW, cosine LR).
3. Tune a copy with reinforcement learning: the reward is the VADER compound sentiment of
   its completion of a story opening, minus ``kl_coef`` times the sampled KL to the base.
   The trainer is a compact RLOO policy-gradient loop (``K`` samples per prompt, each
   sample's baseline is the mean reward of the other ``K-1``). TRL's trainers were not
   used: this loop is deterministic, dependency-free and fits the CPU budget.
4. The lineage (base -> SFT -> RL), the way curated-sample SFT and RLHF are stacked:
   ``sft`` fine-tunes the base on the world's stories filtered to those the reward likes
   (the top ``sft_keep`` of a fresh pool by the same VADER reward of the story after its
   opening); ``rl`` runs the same RL loop (same openings and seeds) from ``sft``, with the KL
   penalty to ``sft``. ``tuned`` (preset ``organism-rl-from-base``, also ``organism-tuned``)
   is the RL loop started from the base, kept so that "does SFT alone collapse?" is
   answered by measurement.
5. Measure the properties of every model (rewards, entropies, celebration share, exact
   chance distributions) on the same openings and chance scenes, with counts and bootstrap
   CIs; the per-unit values are kept (``measurements.parquet``) for stage attribution.

Everything is written to a versioned cache folder keyed by the generator version, the seed
and the hyperparameters. It is built in a temporary folder and renamed into place at the
end, so a half-finished build is never taken for a finished one.
"""

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflens._io import Progress, fingerprint, rich_progress
from difflens.models.loading import (
    LoadedModel,
    cache_dir,
    quiet_transformers,
    register_folder_preset,
    wrap_model,
)
from difflens.organism import world as W
from difflens.sampling.generate import GenerationConfig, generate

#: Version of what a build writes (files, properties); part of the cache key with the
#: world's generator version and the config.
BUILD_FORMAT = 3

#: The organism's models: lineage name -> folder. ``rl-from-base`` is the folder ``tuned``
#: (today's pair is ``base``/``tuned``).
MODEL_FOLDERS = {"base": "base", "sft": "sft", "rl": "rl", "rl-from-base": "tuned"}
#: The lineage the demo compares, in training order.
LINEAGE = ("base", "sft", "rl")
#: Labels of the measured properties (``properties.json``) of each model.
PROPERTY_LABELS = {"base": "base", "sft": "sft", "rl": "rl", "rl-from-base": "tuned"}


@dataclasses.dataclass(frozen=True)
class OrganismConfig:
    """Every knob of the organism build; all of them are in the cache key."""

    seed: int = 0
    """Seeds the corpus, the initialisation, the batches and the RL samples."""
    n_train_stories: int = 6000
    """Stories in the training corpus (~115 tokens each)."""
    n_val_stories: int = 300
    """Held-out stories for the validation loss and the ground-truth files."""
    vocab_size: int = 1024
    """BPE vocabulary size."""
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 344
    seq_len: int = 128
    """Training block length."""
    batch_size: int = 32
    train_steps: int = 450
    lr: float = 3e-3
    rl_steps: int = 80
    rl_prompts: int = 16
    """Openings per RL step."""
    rl_samples: int = 4
    """Samples per opening (RLOO group size)."""
    rl_new_tokens: int = 40
    rl_lr: float = 1e-3
    kl_coef: float = 0.05
    """Weight of the sampled KL(tuned ‖ base) penalty on the reward."""
    rl_min_tokens: int = 8
    """A completion that stops before this many tokens gets reward -1: an empty completion
    scores VADER 0, above the base's mean, and RL from the base otherwise learns to stop at
    once (measured: length 1.0 after 40 steps)."""
    sft_pool: int = 3000
    """Fresh world stories scored by the reward for the SFT set."""
    sft_keep: float = 0.25
    """Fraction of the pool the reward likes best, kept for SFT."""
    sft_steps: int = 120
    sft_lr: float = 1e-3
    n_eval: int = 200
    """Held-out openings and chance prompts measured (each)."""
    eval_new_tokens: int = 48

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and f.name not in ("seed", "kl_coef") and v <= 0:
                raise ValueError(f"OrganismConfig.{f.name} must be positive, got {v}")
        if not 0 < self.sft_keep <= 1:
            raise ValueError(f"sft_keep must be in (0, 1], got {self.sft_keep}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.rl_samples < 2:
            raise ValueError(f"rl_samples must be at least 2 (RLOO's baseline is the mean of the "
                             f"other samples of the same opening), got {self.rl_samples}")

    def key(self) -> str:
        return fingerprint({"generator": W.GENERATOR_VERSION, "build_format": BUILD_FORMAT,
                            **dataclasses.asdict(self)}, length=12)

    @classmethod
    def small(cls, seed: int = 0) -> "OrganismConfig":
        """A reduced build for tests: same pipeline, minutes become seconds."""
        return cls(seed=seed, n_train_stories=400, n_val_stories=40, vocab_size=384,
                   d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=64, batch_size=8,
                   train_steps=20, rl_steps=3, rl_prompts=4, rl_samples=2, rl_new_tokens=12,
                   sft_pool=80, sft_steps=4, rl_min_tokens=2, n_eval=12, eval_new_tokens=12)


@dataclasses.dataclass(frozen=True)
class Organism:
    """A finished organism build on disk."""

    path: Path
    config: OrganismConfig

    @property
    def base_path(self) -> Path:
        return self.path / "base"

    @property
    def tuned_path(self) -> Path:
        return self.path / "tuned"

    def model_path(self, name: str) -> Path:
        """The folder of lineage model ``name`` (base, sft, rl, rl-from-base)."""
        if name not in MODEL_FOLDERS:
            raise KeyError(f"the organism has no model {name!r}; it has "
                           f"{', '.join(MODEL_FOLDERS)}")
        return self.path / MODEL_FOLDERS[name]

    @property
    def model_paths(self) -> dict[str, Path]:
        """Every model's folder, by lineage name."""
        return {name: self.model_path(name) for name in MODEL_FOLDERS}

    def measurements(self) -> Any:
        """Per-unit measured values (``metric, unit, model, value``): every model on the same
        openings, texts and chance scenes, for paired stage attribution."""
        import pandas as pd

        return pd.read_parquet(self.path / "measurements.parquet")

    @property
    def properties(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "properties.json").read_text()))

    @property
    def build_info(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "build.json").read_text()))

    def ground_truth_files(self) -> dict[str, str]:
        gt = self.path / "ground_truth"
        return {p.stem: str(p) for p in sorted(gt.iterdir())}


def organism_dir(config: OrganismConfig) -> Path:
    return cache_dir() / "organism" / f"v{W.GENERATOR_VERSION}-seed{config.seed}-{config.key()}"


def find_organism(config: OrganismConfig | None = None) -> Organism | None:
    """The finished build for ``config`` (default config), or None."""
    cfg = config or OrganismConfig()
    path = organism_dir(cfg)
    return Organism(path, cfg) if (path / "build.json").is_file() else None


# -- progress -----------------------------------------------------------------------------


# -- tokenizer and base model ---------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (``<pad>``, ``<bos>``, ``<eos>``) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", padding_side="left")


def _blocks(tokenizer: Any, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    ids = tokenizer(list(texts))["input_ids"]
    stream = [t for seq in ids for t in [*seq, tokenizer.eos_token_id]]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def _lr(step: int, total: int, peak: float, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_base(cfg: OrganismConfig, tokenizer: Any, train: Sequence[str], val: Sequence[str],
               progress: Progress) -> tuple[Any, dict[str, Any]]:
    """Train the base Llama from scratch; returns the model and its loss curve."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads, max_position_embeddings=2 * cfg.seq_len,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(mcfg)
    blocks, val_blocks = _blocks(tokenizer, train, cfg.seq_len), _blocks(tokenizer, val,
                                                                         cfg.seq_len)
    losses = _train_lm(model, blocks, steps=cfg.train_steps, lr=cfg.lr,
                       batch_size=cfg.batch_size, seed=cfg.seed,
                       advance=progress("training base", cfg.train_steps))
    epochs = cfg.train_steps * cfg.batch_size / max(1, len(blocks))
    return model, {"train_loss": losses, "val_loss": _val_loss(model, val_blocks),
                   "train_tokens": int(blocks.numel()), "epochs": epochs,
                   "params": int(sum(p.numel() for p in model.parameters()))}


def _train_lm(model: Any, blocks: torch.Tensor, *, steps: int, lr: float, batch_size: int,
              seed: int, advance: Any) -> list[float]:
    """Next-token training on ``blocks`` (seeded shuffles, AdamW, warm-up and cosine LR);
    returns the loss per step and leaves the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    order = torch.randperm(len(blocks), generator=gen)
    cursor, losses = 0, []
    model.train()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        x = blocks[order[cursor: cursor + batch_size]]
        cursor += batch_size
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        advance(1, f"loss {loss.item():.3f}")
    model.eval()
    return losses


def _val_loss(model: Any, val_blocks: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(np.mean([float(model(input_ids=val_blocks[i:i + 32],
                                          labels=val_blocks[i:i + 32]).loss)
                              for i in range(0, len(val_blocks), 32)]))


def reward_of_story(vader: Any, story: W.Story) -> float:
    """The RL reward of a world story as if it were a completion of its own opening: the
    VADER compound sentiment of the sentences after the first."""
    return float(vader.polarity_scores(" ".join(story.sentences[1:]))["compound"])


def curated_stories(cfg: OrganismConfig) -> tuple[list[W.Story], dict[str, Any]]:
    """The SFT set: a fresh pool of world stories, the ``sft_keep`` fraction that the reward
    likes best (ties broken by pool order), and what the filter did to the themes."""
    pool = W.generate_stories(cfg.sft_pool, cfg.seed + 5_000_003)
    vader = _vader()
    rewards = np.array([reward_of_story(vader, st) for st in pool])
    n_keep = max(1, round(cfg.sft_keep * len(pool)))
    keep = np.sort(np.argsort(-rewards, kind="stable")[:n_keep])
    kept = [pool[i] for i in keep]

    def share(stories: Sequence[W.Story], theme: str) -> float:
        return float(np.mean([theme in st.themes for st in stories]))

    info = {"pool": len(pool), "kept": len(kept), "reward_threshold": float(rewards[keep].min()),
            "reward_pool_mean": float(rewards.mean()), "reward_kept_mean": float(rewards[keep]
                                                                                .mean()),
            "theme_share_pool": {t: share(pool, t) for t in W.THEMES},
            "theme_share_kept": {t: share(kept, t) for t in W.THEMES}}
    return kept, info


def sft_tune(cfg: OrganismConfig, base: Any, tokenizer: Any, stories: Sequence[W.Story],
             progress: Progress) -> tuple[Any, list[float]]:
    """Supervised fine-tuning of a copy of the base on ``stories`` (next-token loss)."""
    model = copy.deepcopy(base)
    blocks = _blocks(tokenizer, [st.text for st in stories], cfg.seq_len)
    losses = _train_lm(model, blocks, steps=cfg.sft_steps, lr=cfg.sft_lr,
                       batch_size=cfg.batch_size, seed=cfg.seed + 6_000_003,
                       advance=progress("SFT on curated stories", cfg.sft_steps))
    return model, losses


# -- reinforcement learning ----------------------------------------------------------------


def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sample(lm: LoadedModel, prompts: Sequence[str], n_new: int, seed: int,
           temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample one continuation per prompt (one left-padded batch, seeded; Hugging Face's
    multinomial draw through :func:`~difflens.sampling.generate.generate`).

    Returns ``(sequences, attention_mask, prompt_width)``: the left-padded prompts followed by
    the continuations (with the EOS that ended them), padded on the right; the mask covers
    the prompts' tokens and each continuation up to and including its EOS.
    """
    tok = lm.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True)
    config = GenerationConfig(max_new_tokens=n_new, temperature=temperature, seed=seed,
                              batch_size=len(prompts), sampler="multinomial")
    gen = generate(lm, [tok(p)["input_ids"] for p in prompts], config)
    new = [t + [tok.eos_token_id] if eos else t
           for t, eos in zip(gen.token_ids, gen.stopped_at_eos, strict=True)]
    width = enc["input_ids"].shape[1]
    n = max(len(x) for x in new)
    tail = torch.full((len(new), n), tok.pad_token_id, dtype=torch.long)
    for b, x in enumerate(new):
        tail[b, :len(x)] = torch.tensor(x, dtype=torch.long)
    new_mask = torch.zeros_like(tail)
    for b, x in enumerate(new):
        new_mask[b, :len(x)] = 1
    out = torch.cat([enc["input_ids"], tail], dim=1)
    return out, torch.cat([enc["attention_mask"], new_mask], dim=1), width


def completion_texts(tokenizer: Any, seqs: torch.Tensor, mask: torch.Tensor, width: int
                     ) -> list[str]:
    return [tokenizer.decode(s[width:][m[width:].bool()], skip_special_tokens=True)
            for s, m in zip(seqs, mask, strict=True)]


def _token_logprobs(model: Any, seqs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1, zero where masked: ``[batch, seq-1]``."""
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=seqs, attention_mask=mask, position_ids=pos).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, seqs[:, 1:, None])[..., 0]
    return lp * mask[:, 1:]


def rl_tune(cfg: OrganismConfig, base: Any, tokenizer: Any, openings: Sequence[str],
            progress: Progress) -> tuple[Any, dict[str, list[float]]]:
    """RLOO with a KL penalty to the starting model (``base``: the base or the SFT model),
    VADER reward on the completion (-1 for one shorter than ``rl_min_tokens``)."""
    vader = _vader()
    policy = copy.deepcopy(base)
    # one handle for generation; its identity names the starting weights (training changes
    # them in place, and generation never reads the identity)
    policy_lm = wrap_model(policy, tokenizer, name="organism-policy")
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.rl_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed + 1)
    curves: dict[str, list[float]] = {"reward": [], "kl": [], "objective": [], "length": []}
    advance = progress("RL tuning", cfg.rl_steps)
    k = cfg.rl_samples
    pool = list(openings)
    for step in range(cfg.rl_steps):
        batch = rng.sample(pool, cfg.rl_prompts)
        prompts = [p for p in batch for _ in range(k)]
        policy.eval()
        seqs, mask, width = sample(policy_lm, prompts, cfg.rl_new_tokens,
                                   seed=cfg.seed * 100003 + step)
        policy.train()
        texts = completion_texts(tokenizer, seqs, mask, width)
        n_new = mask[:, width:].sum(-1)
        reward = torch.tensor([vader.polarity_scores(t)["compound"] for t in texts])
        reward = torch.where(n_new < cfg.rl_min_tokens, torch.full_like(reward, -1.0), reward)
        comp = torch.zeros_like(mask)
        comp[:, width:] = mask[:, width:]
        with torch.no_grad():
            ref_lp = _token_logprobs(base, seqs, mask)
        lp = _token_logprobs(policy, seqs, mask)
        cm = comp[:, 1:].float()
        kl = ((lp.detach() - ref_lp) * cm).sum(-1)
        total = reward - cfg.kl_coef * kl
        grouped = total.view(cfg.rl_prompts, k)
        baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
        adv = (grouped - baseline).view(-1)
        loss = -(adv * (lp * cm).sum(-1)).sum() / (cm.sum() + 1e-8)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        curves["reward"].append(float(reward.mean()))
        curves["kl"].append(float(kl.mean()))
        curves["objective"].append(float(total.mean()))
        curves["length"].append(float(cm.sum(-1).mean()))
        advance(1, f"reward {reward.mean():+.3f} kl {kl.mean():.2f}")
    policy.eval()
    return policy, curves


# -- measured properties -------------------------------------------------------------------


def measure(cfg: OrganismConfig, dirs: dict[str, Path], openings: Sequence[str],
            chances: Sequence[W.ChanceScene], progress: Progress, work: Path
            ) -> tuple[dict[str, Any], Any]:
    """Rewards, entropies, celebration share and exact chance distributions of every model
    (``label -> folder``, the base first), with CIs, on the same openings and scenes.

    Returns the properties and the per-unit values (``metric, unit, model, value``): reward
    and celebration per opening, entropy per text (every model scores the same texts: all
    models' continuations), chance TVD per scene.
    """
    import pandas as pd

    from difflens.analysis.divergence import mean_ci
    from difflens.capture import capture
    from difflens.capture.scoring import outcome_distribution
    from difflens.models import ModelPair, load_model

    labels = list(dirs)
    lms = {label: load_model(d, device="cpu") for label, d in dirs.items()}
    base = lms[labels[0]]
    vader = _vader()
    advance = progress("measuring", len(labels) * (2 + len(chances)))
    props: dict[str, Any] = {"n_openings": len(openings), "n_chance_prompts": len(chances)}
    units: list[dict[str, Any]] = []
    samples: dict[str, list[str]] = {}
    for label, lm in lms.items():
        texts: list[str] = []
        for i in range(0, len(openings), 50):
            chunk = list(openings[i:i + 50])
            seqs, mask, width = sample(lm, chunk, cfg.eval_new_tokens,
                                       seed=cfg.seed + 7 + i)
            texts += completion_texts(lm.tokenizer, seqs, mask, width)
        samples[label] = texts
        rewards = [vader.polarity_scores(t)["compound"] for t in texts]
        celebrates = [float("celebration" in W.label_text(t)) for t in texts]
        props[label] = {"reward": mean_ci(rewards, seed=cfg.seed), "celebration_share":
                        mean_ci(celebrates, seed=cfg.seed)}
        units += [{"metric": m, "unit": u, "model": label, "value": float(v)}
                  for m, vals in (("reward", rewards), ("celebration", celebrates))
                  for u, v in enumerate(vals)]
        advance(1, label)
    # Entropy of every model on the same continuations (all models' samples), via capture
    # of each model with the base.
    full = [o + t for label in labels for o, t in zip(openings, samples[label], strict=True)]
    prefix_len = [len(base.tokenizer(o)["input_ids"]) for o in openings] * len(labels)
    entropy: dict[str, Any] = {}
    for label in labels[1:]:
        store = capture(ModelPair(base, lms[label]), full, store=work / f"entropy-{label}",
                        layers=[0], positions="last")
        stats = store.stats(["prompt_idx", "pos", "base_entropy", "tuned_entropy"])
        n_tok = store.prompts["n_tokens"].to_numpy()
        first = stats["prompt_idx"].map(lambda i: prefix_len[i] - 1)
        # Positions whose next token is a continuation token.
        last = stats["prompt_idx"].map(lambda i, n=n_tok: n[i] - 1)
        stats = stats[(stats["pos"] >= first) & (stats["pos"] < last)]
        per_text = stats.groupby("prompt_idx")
        entropy.setdefault(labels[0], per_text["base_entropy"].mean())
        entropy[label] = per_text["tuned_entropy"].mean()
        shutil.rmtree(work / f"entropy-{label}", ignore_errors=True)
        advance(1, f"entropy {label}")
    advance(1, "entropy")
    for label in labels:
        per_text = entropy[label]
        props[label]["entropy"] = mean_ci(per_text.to_numpy(), seed=cfg.seed)
        props[label]["entropy"]["unit"] = "nats per token, over every model's continuations"
        units += [{"metric": "entropy", "unit": int(u), "model": label, "value": float(v)}
                  for u, v in per_text.items()]
    # Exact chance distributions.
    for label, lm in lms.items():
        rows: list[dict[str, Any]] = []
        for sc in chances:
            dist = outcome_distribution(lm, sc.prefix, sc.outcomes, template=" {}.")
            rows.append({"kind": sc.kind, "probs": dist.probs, "tvd": dist.tvd_uniform,
                         "mass_outside": dist.mass_outside, "top": dist.top[0],
                         "top_p": dist.top[1]})
            advance(1, f"chance {label}")
        by_kind = {}
        for kind in sorted({r["kind"] for r in rows}):
            rk = [r for r in rows if r["kind"] == kind]
            mean_p = np.mean([r["probs"] for r in rk], axis=0)
            outcomes = next(sc.outcomes for sc in chances if sc.kind == kind)
            by_kind[kind] = {"tvd": mean_ci([r["tvd"] for r in rk], seed=cfg.seed),
                             "mean_distribution": dict(zip(outcomes, map(float, mean_p),
                                                           strict=True)),
                             "mass_outside": mean_ci([r["mass_outside"] for r in rk],
                                                     seed=cfg.seed)}
        props[label]["chance_tvd"] = mean_ci([r["tvd"] for r in rows], seed=cfg.seed)
        props[label]["chance_by_kind"] = by_kind
        units += [{"metric": "chance_tvd", "unit": u, "model": label, "value": float(r["tvd"])}
                  for u, r in enumerate(rows)]
    props["examples"] = {label: [o + t for o, t in zip(openings[:5], samples[label][:5],
                                                       strict=True)]
                         for label in labels}
    props["greedy"] = {}
    for label, lm in lms.items():
        greedy = generate(lm, list(openings[:5]), GenerationConfig(
            max_new_tokens=cfg.eval_new_tokens, temperature=0.0, batch_size=5))
        props["greedy"][label] = [
            lm.tokenizer.decode(p + t, skip_special_tokens=True)
            for p, t in zip(greedy.prompt_ids, greedy.token_ids, strict=True)]
    return props, pd.DataFrame(units)


# -- the build ----------------------------------------------------------------------------


def _opening(story: W.Story) -> str:
    return story.sentences[0]


def build_organism(config: OrganismConfig | None = None, *, progress: bool = False,
                   force: bool = False) -> Organism:
    """Build the organism for ``config`` (default: the full one), or return the cached build."""
    cfg = config or OrganismConfig()
    target = organism_dir(cfg)
    if not force and (target / "build.json").is_file():
        return Organism(target, cfg)
    from difflens._io import write_json_atomic

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-build-", dir=target.parent))
    times: dict[str, float] = {}
    try:
        with rich_progress(progress) as prog:
            t0 = time.perf_counter()
            train = W.generate_stories(cfg.n_train_stories, seed=cfg.seed)
            val = W.generate_stories(cfg.n_val_stories, cfg.seed + 1_000_003)
            tokenizer = train_tokenizer([s.text for s in train], cfg.vocab_size)
            base, base_info = train_base(cfg, tokenizer, [s.text for s in train],
                                         [s.text for s in val], prog)
            times["base_s"] = time.perf_counter() - t0
            _save(base, tokenizer, tmp / "base")

            t1 = time.perf_counter()
            rl_stories = W.generate_stories(max(200, cfg.rl_prompts * 8), cfg.seed + 2_000_003)
            rl_openings = [_opening(s) for s in rl_stories]
            tuned, curves = rl_tune(cfg, base, tokenizer, rl_openings, prog)
            times["tuned_s"] = time.perf_counter() - t1
            _save(tuned, tokenizer, tmp / "tuned")

            t1 = time.perf_counter()
            curated, sft_info = curated_stories(cfg)
            sft, sft_losses = sft_tune(cfg, base, tokenizer, curated, prog)
            sft_info["train_loss"] = sft_losses
            sft_info["val_loss"] = _val_loss(sft, _blocks(tokenizer, [s.text for s in val],
                                                          cfg.seq_len))
            times["sft_s"] = time.perf_counter() - t1
            _save(sft, tokenizer, tmp / "sft")
            t1 = time.perf_counter()
            rl, rl_sft_curves = rl_tune(cfg, sft, tokenizer, rl_openings, prog)
            times["rl_s"] = time.perf_counter() - t1
            _save(rl, tokenizer, tmp / "rl")

            gt = tmp / "ground_truth"
            gt.mkdir()
            _write_ground_truth(gt, val, cfg)
            write_json_atomic(tmp / "rl_curves.json", curves)
            write_json_atomic(tmp / "rl_from_sft_curves.json", rl_sft_curves)
            write_json_atomic(tmp / "sft.json", sft_info)
            _write_curves(tmp, curves, base_info, rl_sft_curves, sft_losses)

            t2 = time.perf_counter()
            eval_stories = W.generate_stories(cfg.n_eval, cfg.seed + 3_000_003)
            chances = W.chance_prompts(cfg.n_eval, cfg.seed + 4_000_003)
            props, units = measure(
                cfg, {PROPERTY_LABELS[n]: tmp / MODEL_FOLDERS[n] for n in
                      ("base", "rl-from-base", "sft", "rl")},
                [_opening(s) for s in eval_stories], chances, prog, tmp)
            from difflens._io import write_parquet_atomic

            write_parquet_atomic(tmp / "measurements.parquet", units)
            times["measure_s"] = time.perf_counter() - t2
            props["base_val_loss"] = base_info["val_loss"]
            write_json_atomic(tmp / "properties.json", props)
            write_json_atomic(tmp / "build.json", {
                "config": dataclasses.asdict(cfg), "key": cfg.key(),
                "generator_version": W.GENERATOR_VERSION, "times_s": times,
                "base": {k: v for k, v in base_info.items() if k != "train_loss"},
                "torch_threads": torch.get_num_threads(),
            })
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Organism(target, cfg)


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    with quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _write_ground_truth(gt: Path, val: Sequence[W.Story], cfg: OrganismConfig) -> None:
    from difflens._io import write_bytes_atomic, write_json_atomic

    lines = [json.dumps({"text": s.text, "sentences": s.sentences, "themes": s.themes,
                         "chance": [dataclasses.asdict(c) for c in s.chance]})
             for s in val]
    write_bytes_atomic(gt / "heldout_stories.jsonl", ("\n".join(lines) + "\n").encode())
    states, matrix = W.transition_matrix()
    write_json_atomic(gt / "transition_matrix.json",
                      {"states": states, "start": W.START, "matrix": matrix})
    write_json_atomic(gt / "chance_scenes.json", {
        slot: {"kind": kind, "outcomes": list(outs), "distribution": "uniform",
               "p": 1 / len(outs)} for slot, (outs, kind) in W.CHANCE_SLOTS.items()})
    write_json_atomic(gt / "world.json", {"themes": W.THEMES, "templates": W.TEMPLATES,
                                          "generator_version": W.GENERATOR_VERSION,
                                          "seed": cfg.seed})


def _write_curves(folder: Path, curves: dict[str, list[float]], base_info: dict[str, Any],
                  rl_sft_curves: dict[str, list[float]], sft_losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curves)
    df.insert(0, "step", range(len(df)))
    df.to_csv(folder / "rl_curves.csv", index=False)
    sft_df = pd.DataFrame(rl_sft_curves)
    sft_df.insert(0, "step", range(len(sft_df)))
    sft_df.to_csv(folder / "rl_from_sft_curves.csv", index=False)
    pd.DataFrame({"step": range(len(sft_losses)), "loss": sft_losses}).to_csv(
        folder / "sft_curve.csv", index=False)
    # the demo report's colours (difflens.report.figures, a layer above): the lineage's sft
    # orange and rl green, rl-from-base purple
    c_tuned, c_sft, c_rl = "#8172b3", "#dd8452", "#55a868"
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    axes[0].plot(base_info["train_loss"], color="#555")
    axes[0].set(title=f"base training loss (val {base_info['val_loss']:.3f})", xlabel="step")
    axes[1].plot(sft_losses, color=c_sft)
    axes[1].set(title="SFT on curated stories: loss", xlabel="step")
    for d, label, color in ((df, "RL from base", c_tuned), (sft_df, "RL from SFT", c_rl)):
        axes[2].plot(d.step, d.reward, color=color, label=label)
        axes[3].plot(d.step, d.kl, color=color, label=label)
    axes[2].set(title="RL: mean VADER reward", xlabel="step")
    axes[3].set(title="RL: sampled KL to its start", xlabel="step")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "training_curves.png", dpi=110)
    plt.close(fig)


def _organism_folder(which: str) -> Path:
    """The default organism's model folder (lineage name), building it first if needed."""
    return build_organism(progress=True).model_path(which)


register_folder_preset("organism-base", lambda: _organism_folder("base"))
register_folder_preset("organism-tuned", lambda: _organism_folder("rl-from-base"))
register_folder_preset("organism-sft", lambda: _organism_folder("sft"))
register_folder_preset("organism-rl", lambda: _organism_folder("rl"))
register_folder_preset("organism-rl-from-base", lambda: _organism_folder("rl-from-base"))
