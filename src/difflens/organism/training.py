"""Training the organism's models on CPU: the world's BPE tokenizer, the base LM from
scratch, SFT on reward-curated stories, and the RLOO loop against the VADER reward (see
``difflens.organism.build`` for the recipe)."""

import copy
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from difflens._io import Progress
from difflens.models.labellers import vader
from difflens.models.loading import LoadedModel, wrap_model
from difflens.organism import world as W
from difflens.organism.config import OrganismConfig
from difflens.sampling.generate import GenerationConfig, generate


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


def token_blocks(tokenizer: Any, texts: Sequence[str], seq_len: int) -> torch.Tensor:
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
    blocks, val_blocks = token_blocks(tokenizer, train, cfg.seq_len), token_blocks(tokenizer, val,
                                                                         cfg.seq_len)
    losses = _train_lm(model, blocks, steps=cfg.train_steps, lr=cfg.lr,
                       batch_size=cfg.batch_size, seed=cfg.seed,
                       advance=progress("training base", cfg.train_steps))
    epochs = cfg.train_steps * cfg.batch_size / max(1, len(blocks))
    return model, {"train_loss": losses, "val_loss": validation_loss(model, val_blocks),
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


def validation_loss(model: Any, val_blocks: torch.Tensor) -> float:
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
    blocks = token_blocks(tokenizer, [st.text for st in stories], cfg.seq_len)
    losses = _train_lm(model, blocks, steps=cfg.sft_steps, lr=cfg.sft_lr,
                       batch_size=cfg.batch_size, seed=cfg.seed + 6_000_003,
                       advance=progress("SFT on curated stories", cfg.sft_steps))
    return model, losses


# -- reinforcement learning ----------------------------------------------------------------


def _vader() -> Any:
    """The reward's sentiment labeller: VADER, as every instrument loads it."""
    return vader()


def sample(lm: LoadedModel, prompts: Sequence[str], n_new: int, seed: int,
           temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample one continuation per prompt (one left-padded batch, seeded; Hugging Face's
    multinomial draw through ``generate``).

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


def _reply_logprob(model: Any, tokenizer: Any, prompts: Sequence[str],
                   replies: Sequence[str], max_len: int) -> torch.Tensor:
    """Sum of log p(reply tokens | prompt) per row (right-padded, cut at ``max_len``)."""
    rows, starts = [], []
    for prompt, reply in zip(prompts, replies, strict=True):
        p_ids = tokenizer(prompt)["input_ids"]
        r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        ids = (p_ids + r_ids)[-max_len:]
        rows.append(ids)
        starts.append(max(1, len(ids) - len(r_ids)))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(seqs)
    for b, r in enumerate(rows):
        seqs[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    lp = _token_logprobs(model, seqs, mask)  # [batch, width-1]: token t given tokens < t
    cols = torch.arange(1, width)[None, :]
    in_reply = cols >= torch.tensor(starts)[:, None]
    return (lp * in_reply).sum(-1)


def preference_margins(model: Any, tokenizer: Any, prefs: Sequence[Any], *, max_len: int,
                       batch_size: int = 8) -> np.ndarray:
    """``log p(chosen | prompt) - log p(rejected | prompt)`` per pair (summed over each
    reply's tokens, cut as DPO cuts them), in batches, without gradients."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(prefs), batch_size):
            chunk = prefs[i:i + batch_size]
            prompts = [p.prompt for p in chunk]
            c = _reply_logprob(model, tokenizer, prompts, [p.chosen for p in chunk], max_len)
            r = _reply_logprob(model, tokenizer, prompts, [p.rejected for p in chunk], max_len)
            out.append((c - r).float().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def dpo_tune(start: Any, tokenizer: Any, prefs: Sequence[Any], *, steps: int, lr: float,
             beta: float, batch_size: int, seed: int, max_len: int,
             progress: Progress) -> tuple[Any, dict[str, list[float]]]:
    """Direct preference optimisation (Rafailov et al. 2023) of a copy of ``start`` against
    ``start`` frozen as the reference: ``-log sigmoid(beta * ((log pi(c) - log ref(c)) -
    (log pi(r) - log ref(r))))`` over seeded batches of ``prefs`` (``prompt``, ``chosen``,
    ``rejected``). A loop in the organism's manner (seeded, AdamW, clipped) rather than
    trl's trainer: the same few lines as ``rl_tune``, and no trainer stack to configure."""
    policy = copy.deepcopy(start)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    curves: dict[str, list[float]] = {"loss": [], "margin": [], "accuracy": []}
    advance = progress("DPO", steps)
    for _ in range(steps):
        batch = rng.sample(list(prefs), min(batch_size, len(prefs)))
        prompts = [b.prompt for b in batch]
        with torch.no_grad():
            ref_c = _reply_logprob(start, tokenizer, prompts, [b.chosen for b in batch],
                                   max_len)
            ref_r = _reply_logprob(start, tokenizer, prompts, [b.rejected for b in batch],
                                   max_len)
        pol_c = _reply_logprob(policy, tokenizer, prompts, [b.chosen for b in batch], max_len)
        pol_r = _reply_logprob(policy, tokenizer, prompts, [b.rejected for b in batch],
                               max_len)
        margin = beta * ((pol_c - ref_c) - (pol_r - ref_r))
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        curves["loss"].append(float(loss.detach()))
        curves["margin"].append(float(margin.detach().mean()))
        curves["accuracy"].append(float((margin.detach() > 0).float().mean()))
        advance(1, f"loss {loss.item():.3f}")
    policy.eval()
    return policy, curves


# -- measured properties -------------------------------------------------------------------

