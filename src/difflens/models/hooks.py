"""The one hook site: a captured layer index -> the module whose input or output is that
layer's residual stream, and scoped hooks that read it or change it.

Layer numbering: layer 0 is the input of block 0, layer ``i`` the output of block ``i - 1``
and the last layer (``n_layers``) the input of the LM head, after the final norm. This
matches ``output_hidden_states`` exactly. Hooks are removed on exit, also after an
exception; the model's weights are never changed.

On a model split by a device map the hooks sit on the same modules as accelerate's: a
hook sees the hidden state on the device its module hands it over on (the block's
execution device; for an input, the device of the module before), also when the block's
weights are offloaded to the CPU or disk. Callers move what they keep.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from difflens.errors import InputError
from difflens.models.loading import LoadedModel


def layer_module(lm: LoadedModel, layer: int) -> tuple[Any, str]:
    """The module whose ``"input"`` or ``"output"`` is captured layer ``layer``: the input of
    block 0 (layer 0), the output of block ``layer - 1``, or the input of the LM head (the
    last layer). Negative layers count from the end."""
    layer = lm.layers.normalize(layer)
    blocks = lm.layers.blocks(lm.model)
    if layer == 0:
        return blocks[0], "input"
    if layer < lm.n_layers:
        return blocks[layer - 1], "output"
    head = lm.model.get_output_embeddings()
    if head is None:
        raise InputError(f"{lm.identity.name} has no LM head, so layer {layer} (its input) "
                         f"cannot be hooked; use a layer below {lm.n_layers}")
    return head, "input"


def module_path(lm: LoadedModel, layer: int) -> str:
    """Where captured ``layer`` is read, for provenance: ``model.layers.3 (output)``."""
    module, side = layer_module(lm, layer)
    names = {id(m): name for name, m in lm.model.named_modules()}
    return f"{names.get(id(module), type(module).__name__)} ({side})"


def register_residual_hook(lm: LoadedModel, layer: int,
                           fn: Callable[[Tensor], Tensor | None]) -> Any:
    """Call ``fn(hidden)`` on captured ``layer`` at every forward pass; a tensor it returns
    replaces the hidden state, ``None`` leaves it as it was. Returns the handle (call
    ``.remove()``); prefer the scoped ``record_layers`` and ``steering``."""
    module, side = layer_module(lm, layer)

    def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        new = fn(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    def post(_m: Any, _a: Any, _k: Any, output: Any) -> Any:
        new = fn(output[0] if isinstance(output, tuple) else output)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    if side == "input":
        return module.register_forward_pre_hook(pre, with_kwargs=True)
    return module.register_forward_hook(post, with_kwargs=True)


@contextmanager
def record_layers(lm: LoadedModel, layers: Sequence[int],
                  device: torch.device | str | None = None) -> Iterator[dict[int, Tensor]]:
    """Record the residual stream at ``layers`` during forward passes, without changing it.

    Yields ``layer -> hidden state`` of the latest pass (detached); it matches
    ``output_hidden_states`` exactly. On a model split by a device map each state stays on
    the device its layer ran on, unless ``device`` is given: then every state is moved
    there as it is recorded (e.g. ``lm.device``, where the logits come back). The hooks are
    removed on exit.
    """
    out: dict[int, Tensor] = {}
    handles = []

    def keep(layer: int) -> Callable[[Tensor], None]:
        def fn(h: Tensor) -> None:
            out[layer] = h.detach() if device is None else h.detach().to(device)
        return fn

    try:
        for layer in sorted(set(layers)):
            handles.append(register_residual_hook(lm, layer, keep(layer)))
        yield out
    finally:
        for h in handles:
            h.remove()


_FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


def final_norm(lm: LoadedModel) -> Any:
    """The final norm between the last block and the LM head (``model.norm`` of a Llama,
    ``transformer.ln_f`` of a GPT-2): the module a logit lens applies before the head. It
    is found beside the blocks (the parent of the blocks' ``ModuleList``)."""
    parent_path = lm.layers.path.rpartition(".")[0]
    parent = lm.model.get_submodule(parent_path) if parent_path else lm.model
    for name in _FINAL_NORMS:
        module = getattr(parent, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise InputError(f"{lm.identity.name}: no final norm beside its blocks ({parent_path}."
                     f"{{{','.join(_FINAL_NORMS)}}}), so the logit lens cannot read layer "
                     f"states; use the last layer ({lm.n_layers}), which is already normed")


def unembed(lm: LoadedModel, states: Tensor, layer: int) -> Tensor:
    """Logits of residual states read at captured ``layer`` through the model's own final
    norm and LM head (the logit lens; the last layer is already normed, so only the head
    is applied). ``states``: ``[..., d_model]``; returns float32 ``[..., vocab]``."""
    layer = lm.layers.normalize(layer)
    head = lm.model.get_output_embeddings()
    x = states.to(lm.device, next(head.parameters()).dtype)
    with torch.inference_mode():
        if layer < lm.n_layers:
            x = final_norm(lm)(x)
        return head(x).float()
