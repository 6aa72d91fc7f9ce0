"""The state of a prompt where the continuation starts: its final-token hidden state at each
layer, and the entropy of the model's next-token distribution there."""

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float

from difflens.capture.engine import forward_batch
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


def prompt_ends(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int], *,
                batch_size: int = 32) -> PromptEnds:
    """Final-token states at ``layers`` and the next-token entropy of every prompt (one
    padded forward pass per batch, through :func:`~difflens.capture.engine.forward_batch`)."""
    seqs = [list(lm.tokenizer(p)["input_ids"]) for p in prompts]
    if not seqs or any(not s for s in seqs):
        raise InputError("every prompt needs at least one token")
    states = {layer: np.zeros((len(seqs), lm.d_model), np.float32) for layer in layers}
    entropy = np.zeros(len(seqs), np.float64)
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s:s + batch_size]
        out = forward_batch(lm, chunk, list(layers))
        for b, ids in enumerate(chunk):
            last = out.sequence(b, len(ids)).stop - 1
            lp = torch.log_softmax(out.logits[b, last].double(), -1)
            entropy[s + b] = float(-(lp.exp() * lp).sum())
            for layer in layers:
                states[layer][s + b] = out.hidden[layer][b, last].float().cpu().numpy()
    return PromptEnds(states=states, entropy=entropy,
                      n_tokens=np.array([len(q) for q in seqs], np.float64))
