"""The forward passes of the Activation Difference Lens (ADL; Minder et al. 2025, "Narrow
finetuning leaves clearly readable traces in activation differences").

- ``activation_difference``: the mean of ``h_tuned - h_base`` over texts, per captured
  layer and per position, for the first ``k`` positions of each text, as the difference of
  the two models' ``mean_states`` over the same token ids (one forward per model per batch,
  every layer recorded by the one hook site; a lineage reuses each model's means for all
  its pairs), and each model's mean state norm per layer (positions after the first), which
  the Patchscope and steering scale to.
- ``logit_lens``: vectors read through a model's own final norm and LM head.
- ``patchscope``: the next-token distribution of identity prompts (``man -> man\\n1135 ->
  1135\\nhello -> hello\\n?``) whose last token's state at a layer is *replaced* by a
  vector: what the model "says" the vector is.
- ``patched_losses``: the causal check. The tuned model's state at a layer is replaced by
  the base's state plus a vector, at every position, and the loss on texts is measured:
  ``delta`` against random vectors of the same norm says how much of the fine-tune's
  effect the one direction carries.
- ``continuation_nll``: mean NLL per token of continuations under a model (the coherence
  test of steered samples, as control's fluency cost measures it).

Statistics over these arrays live in ``analysis/discover.py``.
"""

import dataclasses
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from difflens.capture.engine import forward_batch
from difflens.errors import InputError
from difflens.models.batching import accepts, pad_batch
from difflens.models.hooks import record_layers, register_residual_hook, unembed
from difflens.models.loading import LoadedModel

#: The Patchscope's identity prompts: each maps a word to itself, then ends on ``?``, at
#: whose state the vector is patched (tokens are kept only where every prompt agrees).
IDENTITY_PROMPTS: tuple[str, ...] = (
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "cat -> cat\n42 -> 42\nblue -> blue\n?",
    "tree -> tree\n7 -> 7\nsmile -> smile\n?",
)


@dataclasses.dataclass(frozen=True)
class ActivationDifference:
    """Mean ``h_tuned - h_base`` per layer and position, over the same texts."""

    layers: tuple[int, ...]
    """Captured layers ``0..n_layers`` (0 = embeddings)."""
    delta: Float[Tensor, "layer pos d_model"]
    counts: Int[Tensor, " pos"]
    """Texts that reach each position."""
    tuned_norm: Float[Tensor, " layer"]
    """Mean ``||h_tuned||`` per layer over the positions after the first."""
    base_norm: Float[Tensor, " layer"]
    bos: bool
    """Whether position 0 is a BOS token the tokenizer added (text-independent)."""

    @property
    def k(self) -> int:
        return int(self.delta.shape[1])

    def at(self, layer: int) -> Float[Tensor, "pos d_model"]:
        return self.delta[self.layers.index(layer)]

    def mean_delta(self, layer: int) -> Float[Tensor, " d_model"]:
        """The mean over positions of ``delta`` at ``layer``, leaving out a BOS position
        (its state does not depend on the text) when there are others."""
        d = self.at(layer)
        first = 1 if self.bos and d.shape[0] > 1 else 0
        w = self.counts[first:].to(d.dtype)
        return (d[first:] * w[:, None]).sum(0) / w.sum().clamp_min(1)


def token_ids(lm: LoadedModel, texts: Sequence[str], k: int | None) -> list[list[int]]:
    """Each text's token ids as the model reads it (special tokens added, cut at the
    model's length and at the first ``k`` when given)."""
    out = []
    for t in texts:
        ids = list(lm.tokenizer(t, add_special_tokens=True)["input_ids"])
        if lm.max_length:
            ids = ids[:lm.max_length]
        out.append(ids[:k] if k else ids)
    return out


def _bos(lm: LoadedModel) -> bool:
    bos = lm.tokenizer.bos_token_id
    ids = lm.tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


@dataclasses.dataclass(frozen=True)
class MeanStates:
    """One model's mean state per captured layer and position over the first ``k`` tokens
    of texts (the half of the ADL that one model gives: the difference of two models' means
    over the same token ids is the mean of their differences, so a lineage reads each model
    once for all its pairs)."""

    layers: tuple[int, ...]
    mean: Float[Tensor, "layer pos d_model"]
    """float64."""
    counts: Int[Tensor, " pos"]
    norm: Float[Tensor, " layer"]
    """Mean ``||h||`` per layer over the positions after the first."""
    bos: bool


def mean_states(lm: LoadedModel, texts: Sequence[str], *, k: int = 5, batch_size: int = 32,
                progress: Callable[[int], None] | None = None) -> MeanStates:
    """``lm``'s mean state at every captured layer for the first ``k`` positions of
    ``texts`` (one batched forward per ``batch_size`` texts, every layer recorded by the one
    hook site)."""
    if k < 1:
        raise InputError(f"k (positions) must be at least 1, got {k}")
    seqs = token_ids(lm, texts, k)
    if not seqs or max(len(s) for s in seqs) == 0:
        raise InputError("no text has any token; give texts with words in them")
    layers = tuple(range(lm.n_layers + 1))
    width = max(len(s) for s in seqs)
    total = torch.zeros((len(layers), width, lm.d_model), dtype=torch.float64)
    norms = torch.zeros(len(layers), dtype=torch.float64)
    counts = torch.zeros(width, dtype=torch.long)
    n_norm = 0
    for start in range(0, len(seqs), batch_size):
        batch = [s for s in seqs[start:start + batch_size] if s]
        if not batch:
            continue
        out = forward_batch(lm, batch, layers)
        _, mask, _ = pad_batch(batch, "right", "cpu")
        m = mask.to(torch.float64)
        w = mask.shape[1]
        counts[:w] += mask.sum(0)
        later = m.clone()
        later[:, 0] = 0
        n_norm += int(later.sum())
        for i, layer in enumerate(layers):
            h = out.hidden[layer].detach().to("cpu", torch.float64)
            total[i, :w] += (h * m[..., None]).sum(0)
            norms[i] += (h.norm(dim=-1) * later).sum()
        if progress is not None:
            progress(len(batch))
    return MeanStates(layers=layers, mean=total / counts.clamp_min(1)[None, :, None],
                      counts=counts, norm=norms / max(n_norm, 1), bos=_bos(lm))


def activation_difference(base: LoadedModel | MeanStates, tuned: LoadedModel | MeanStates,
                          texts: Sequence[str] = (), *, k: int = 5, batch_size: int = 32,
                          progress: Callable[[int], None] | None = None
                          ) -> ActivationDifference:
    """The ADL's mean difference ``h_tuned - h_base`` at every captured layer for the first
    ``k`` positions of ``texts``: from each model's ``mean_states`` (pass them instead of a
    model to reuse them)."""
    a, b = (x if isinstance(x, MeanStates) else
            mean_states(x, texts, k=k, batch_size=batch_size, progress=progress)
            for x in (base, tuned))
    if a.mean.shape != b.mean.shape or not torch.equal(a.counts, b.counts):
        raise InputError("the two models' mean states are of other texts or positions")
    return ActivationDifference(layers=b.layers, delta=(b.mean - a.mean).float(),
                                counts=b.counts, tuned_norm=b.norm.float(),
                                base_norm=a.norm.float(), bos=b.bos)


def logit_lens(lm: LoadedModel, vectors: Float[Tensor, "n d_model"], layer: int
               ) -> Float[Tensor, "n vocab"]:
    """Log-probabilities of ``vectors`` read as states at ``layer`` through ``lm``'s final
    norm and LM head."""
    return torch.log_softmax(unembed(lm, vectors, layer), -1).cpu()


def _prompt_ids(lm: LoadedModel, prompts: Sequence[str]) -> list[list[int]]:
    return [list(lm.tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]


def patchscope(lm: LoadedModel, vectors: Float[Tensor, "n d_model"], layer: int, *,
               prompts: Sequence[str] = IDENTITY_PROMPTS, batch_size: int = 32
               ) -> Float[Tensor, "n prompt vocab"]:
    """Next-token log-probabilities when the state at ``layer`` of each prompt's last token
    is replaced by each vector (rows ``vector x prompt``; the vectors are used as given,
    scale them first)."""
    seqs = _prompt_ids(lm, prompts)
    rows = [(v, p) for v in range(len(vectors)) for p in range(len(seqs))]
    out = torch.empty((len(vectors), len(seqs), 0))
    pieces: list[Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask, pos = pad_batch([seqs[p] for _, p in chunk], "left", lm.device)
        patch = torch.stack([vectors[v] for v, _ in chunk]).to(lm.device)

        def replace(h: Tensor, patch: Tensor = patch) -> Tensor:
            h = h.clone()
            h[:, -1] = patch.to(h.dtype)
            return h

        kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if accepts(lm.model, "position_ids"):
            kwargs["position_ids"] = pos
        handle = register_residual_hook(lm, layer, replace)
        try:
            with torch.inference_mode():
                logits = lm.model(**kwargs).logits[:, -1].float()
        finally:
            handle.remove()
        pieces.append(torch.log_softmax(logits, -1).cpu())
    if pieces:
        out = torch.cat(pieces).reshape(len(vectors), len(seqs), -1)
    return out


def _token_nll(logits: Tensor, ids: Tensor, mask: Tensor, first: Tensor) -> Tensor:
    """Per-row mean NLL of the tokens at positions >= ``first[row]`` (and masked in)."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    cols = torch.arange(1, ids.shape[1], device=ids.device)[None, :]
    keep = (mask[:, 1:] > 0) & (cols >= first[:, None])
    return (nll * keep).sum(-1) / keep.sum(-1).clamp_min(1)


def continuation_nll(lm: LoadedModel, prompts: Sequence[Sequence[int]],
                     continuations: Sequence[Sequence[int]], *, batch_size: int = 32
                     ) -> Float[Tensor, " n"]:
    """Mean NLL per token of each continuation given its prompt under ``lm`` (NaN for an
    empty continuation); its exp is the perplexity the coherence test compares."""
    out = torch.full((len(prompts),), float("nan"))
    for start in range(0, len(prompts), batch_size):
        idx = [i for i in range(start, min(start + batch_size, len(prompts)))
               if len(continuations[i])]
        if not idx:
            continue
        seqs = [list(prompts[i]) + list(continuations[i]) for i in idx]
        ids, mask, pos = pad_batch(seqs, "right", lm.device)
        kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if accepts(lm.model, "position_ids"):
            kwargs["position_ids"] = pos
        with torch.inference_mode():
            logits = lm.model(**kwargs).logits
        first = torch.tensor([len(prompts[i]) for i in idx], device=ids.device)
        out[idx] = _token_nll(logits, ids, mask, first).cpu()
    return out


def patched_losses(base: LoadedModel, tuned: LoadedModel, texts: Sequence[str], layer: int,
                   vectors: Float[Tensor, "m d_model"], *, batch_size: int = 16
                   ) -> tuple[Float[Tensor, "m n"], Float[Tensor, " n"], Float[Tensor, " n"]]:
    """The causal check: the tuned model's mean token NLL on each text when its state at
    ``layer`` is replaced, at every position, by the base's state plus each vector (rows of
    the first result); then the tuned and the base model's own NLL on each text."""
    seqs = [s for s in token_ids(tuned, texts, None)]
    if any(len(s) < 2 for s in seqs):
        raise InputError("every fine-tuning text needs at least two tokens for its loss")
    m, n = len(vectors), len(seqs)
    patched = torch.zeros((m, n))
    own = {"tuned": torch.zeros(n), "base": torch.zeros(n)}
    for start in range(0, n, batch_size):
        batch = seqs[start:start + batch_size]
        ids, mask, pos = pad_batch(batch, "right", tuned.device)
        kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if accepts(tuned.model, "position_ids"):
            kwargs["position_ids"] = pos
        zero = torch.zeros(len(batch), dtype=torch.long, device=ids.device)
        with torch.inference_mode(), record_layers(base, [layer], device=tuned.device) as rec:
            base_logits = base.model(**kwargs).logits
        h_base = rec[layer]
        own["base"][start:start + len(batch)] = _token_nll(base_logits, ids, mask, zero).cpu()
        with torch.inference_mode():
            own["tuned"][start:start + len(batch)] = _token_nll(
                tuned.model(**kwargs).logits, ids, mask, zero).cpu()
        for j in range(m):
            vec = vectors[j].to(tuned.device)

            def replace(h: Tensor, vec: Tensor = vec, h_base: Tensor = h_base) -> Tensor:
                return (h_base + vec).to(h.dtype)

            handle = register_residual_hook(tuned, layer, replace)
            try:
                with torch.inference_mode():
                    logits = tuned.model(**kwargs).logits
            finally:
                handle.remove()
            patched[j, start:start + len(batch)] = _token_nll(logits, ids, mask, zero).cpu()
    return patched, own["tuned"], own["base"]


__all__ = ["IDENTITY_PROMPTS", "ActivationDifference", "MeanStates", "activation_difference",
           "mean_states",
           "continuation_nll", "logit_lens", "patched_losses", "patchscope"]
