"""Steering: add ``alpha * v`` to the residual stream at one layer, inside a scoped hook.

Layer numbering is the capture numbering: layer 0 is the input of block 0, layer ``i`` the
output of block ``i - 1`` and the last layer the input of the LM head. The vector is added
at every position a forward pass processes, so generating with a KV cache gives the same
result as recomputing the whole sequence: each position is steered once, when it is first
computed. The hook is removed on exit, also after an exception; the model's weights are
never touched.
"""

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from difflens.errors import InputError
from difflens.models.loading import LoadedModel


def _add(hidden: Tensor, delta: Tensor) -> Tensor:
    return hidden + delta.to(hidden.dtype)


def register_residual_hook(lm: LoadedModel, layer: int, fn: Callable[[Tensor], Tensor]
                           ) -> Any:
    """Register ``fn(hidden) -> new hidden`` at captured ``layer``; returns the handle."""
    layer = lm.layers.normalize(layer)
    blocks = lm.layers.blocks(lm.model)
    n = lm.n_layers

    def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = fn(kwargs["hidden_states"])
        return args, kwargs

    def post(_m: Any, _a: Any, _k: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    if layer == 0:
        return blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    if layer < n:
        return blocks[layer - 1].register_forward_hook(post, with_kwargs=True)
    head = lm.model.get_output_embeddings()
    if head is None:
        raise InputError(f"{lm.identity.name} has no LM head to steer at layer {n}")
    return head.register_forward_pre_hook(pre, with_kwargs=True)


@contextmanager
def steering(lm: LoadedModel, vectors: Mapping[int, Float[Tensor, " d_model"]],
             alpha: float = 1.0) -> Iterator[None]:
    """Add ``alpha * vectors[layer]`` to the residual stream at each given layer.

    Args:
        lm: the model to steer (its weights are not changed).
        vectors: captured layer -> vector of size ``d_model``.
        alpha: the multiplier (0 changes nothing, bit for bit).

    Example:
        >>> with steering(lm, {6: v}, alpha=4.0):
        ...     out = lm.model.generate(ids, max_new_tokens=20)
    """
    handles = []
    try:
        for layer, vec in vectors.items():
            vec = torch.as_tensor(vec)
            if vec.ndim != 1 or vec.shape[0] != lm.d_model:
                raise InputError(f"a steering vector for {lm.identity.name} must have "
                                 f"{lm.d_model} entries, got shape {tuple(vec.shape)}")
            delta = (alpha * vec.float()).to(lm.device)
            handles.append(register_residual_hook(lm, layer, functools.partial(_add, delta=delta)))
        yield
    finally:
        for h in handles:
            h.remove()


def generate(lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 30,
             chat: bool = False) -> list[str]:
    """Greedy continuations (KV cache on, one left-padded batch), as text without the prompt.

    Use inside :func:`steering` to get steered generations.
    """
    from difflens.capture.engine import _pad

    tok = lm.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                     add_generation_prompt=True) if chat else p for p in prompts]
    seqs = [tok(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    ids, mask, _ = _pad(seqs, "left", lm.device)  # one batched call; left padding
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        gen = lm.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=pad)
    out = [tok.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in gen]
    return out


def dose_response(
    lm: LoadedModel,
    items: Sequence[Any],
    vectors: Mapping[int, Float[Tensor, " d_model"]],
    alphas: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    on_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """P(matching answer) of A/B items under steering, per layer and multiplier.

    Args:
        lm: the model.
        items: tokenized items (:func:`~difflens.capture.abdata.tokenize_items`), usually
            the held-out ones.
        vectors: layer -> steering vector; each layer is steered on its own.
        alphas: multipliers of the vector.
        n_boot: bootstrap resamples for the CI over items.
        seed: bootstrap seed.
        batch_size: items per forward pass.
        on_step: called after each (layer, alpha).

    Returns:
        Rows ``{layer, alpha, p_match, ci_low, ci_high, n}``: P(matching) is normalised over
        the two answers, averaged over items, with a percentile bootstrap 95% CI.
    """
    from difflens.analysis.divergence import bootstrap_ci
    from difflens.capture.ab import forward_ab

    rows = []
    for layer, vec in vectors.items():
        for alpha in alphas:
            with steering(lm, {layer: vec}, alpha):
                res = forward_ab(lm, items, [], batch_size=batch_size)
            lp = res.logp.double()
            p = torch.sigmoid(lp[:, 0] - lp[:, 1]).numpy()
            lo, hi = bootstrap_ci(p, seed=seed, n_boot=n_boot)
            rows.append({"layer": int(layer), "alpha": float(alpha), "p_match": float(p.mean()),
                         "ci_low": lo, "ci_high": hi, "n": len(p)})
            if on_step is not None:
                on_step()
    return rows
