"""The state of a prompt where the continuation starts: its final-token hidden state at each
layer (and, asked for, the states of its last few tokens), and the entropy of the model's
next-token distribution there.

This is the one forward pass over prompts that reads their states (the collapse pipeline's
entropy prediction and the themes pipeline's predictors both use it). Prompts are tokenised
as the rest of capture tokenises them (``tokenize_prompts``:
special tokens added, a prompt longer than the model's context keeps its end), or, with
``chat``, in the chat template (as generation wraps them, so the states are read where the
continuations were sampled).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float

from difflens.capture.engine import forward_batch
from difflens.capture.plan import tokenize_prompts
from difflens.errors import InputError
from difflens.models.loading import LoadedModel


@dataclasses.dataclass(frozen=True)
class PromptEnds:
    states: dict[int, Float[np.ndarray, "n d_model"]]
    """Layer -> the final prompt token's hidden state, one row per prompt."""
    entropy: Float[np.ndarray, " n"]
    """Entropy (nats) of the next-token distribution after each prompt."""
    n_tokens: Float[np.ndarray, " n"]
    """Tokens of each prompt."""
    last: dict[int, Float[np.ndarray, "n m d_model"]] = dataclasses.field(default_factory=dict)
    """Layer -> the states of each prompt's last ``m`` tokens, right-aligned (a prompt of
    fewer tokens leaves zero rows in front); empty unless asked for (``last > 0``)."""
    last_mask: Bool[np.ndarray, "n m"] | None = None
    """Which rows of ``last`` hold a token's state; None unless asked for."""


def prompt_ids(lm: LoadedModel, prompts: Sequence[str], *, chat: bool = False
               ) -> list[list[int]]:
    """The token ids the prompt-end states are read from: capture's tokenisation, or with
    ``chat`` the chat template of generation."""
    if chat:
        from difflens.sampling.generate import encode_prompts

        return encode_prompts(lm, prompts, chat=True)
    if not prompts:
        raise InputError("no prompts to read")
    seqs, _ = tokenize_prompts(lm, prompts, lm.max_length, truncate=True)
    return seqs


def prompt_ends(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int], *,
                batch_size: int = 32, last: int = 0, chat: bool = False) -> PromptEnds:
    """Final-token states at ``layers`` and the next-token entropy of every prompt (one
    padded forward pass per batch, through ``forward_batch``).

    Args:
        lm: the model.
        prompts: the prompts (tokenised by ``prompt_ids``).
        layers: capture layer indices to read.
        batch_size: prompts per forward pass.
        last: also keep the states of each prompt's last ``last`` tokens
            (``PromptEnds.last``, with ``PromptEnds.last_mask``).
        chat: read the prompts in the chat template.
    """
    seqs = prompt_ids(lm, prompts, chat=chat)
    if not seqs or any(not s for s in seqs):
        raise InputError("every prompt needs at least one token")
    states = {layer: np.zeros((len(seqs), lm.d_model), np.float32) for layer in layers}
    tail = {layer: np.zeros((len(seqs), last, lm.d_model), np.float32) for layer in layers
            } if last > 0 else {}
    mask = np.zeros((len(seqs), last), dtype=bool) if last > 0 else None
    entropy = np.zeros(len(seqs), np.float64)
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s:s + batch_size]
        out = forward_batch(lm, chunk, list(layers))
        for b, ids in enumerate(chunk):
            rows = out.sequence(b, len(ids))
            end = rows.stop - 1
            lp = torch.log_softmax(out.logits[b, end].double(), -1)
            entropy[s + b] = float(-(lp.exp() * lp).sum())
            take = min(last, len(ids))
            if mask is not None:
                mask[s + b, last - take:] = True
            for layer in layers:
                h = out.hidden[layer]
                states[layer][s + b] = h[b, end].float().cpu().numpy()
                if take:
                    tail[layer][s + b, last - take:] = (
                        h[b, rows][-take:].float().cpu().numpy())
    return PromptEnds(states=states, entropy=entropy,
                      n_tokens=np.array([len(q) for q in seqs], np.float64), last=tail,
                      last_mask=mask)
