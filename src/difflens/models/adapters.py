"""Adapters as models: ``BASE+ADAPTER`` names a base model with a peft adapter (a LoRA a
fine-tune shipped instead of full weights) applied, everywhere a model is taken.

``BASE`` is anything ``load_model`` takes (a preset, a folder, a hub id); ``ADAPTER`` is a
peft adapter folder (``adapter_config.json`` and its weights) or a hub id. The adapter's
LoRA layers are injected into the base's own modules (peft's ``PeftModel``), and the
plain ``transformers`` model that holds them is what difflens runs, so every hook, cache and
generation path sees an ordinary causal LM. ``merge=True`` folds the adapter into the
weights instead (``merge_and_unload``): the same outputs to float rounding, and no LoRA
modules left. The adapter's name and the SHA-256 of its files go into the model's identity
(``ModelIdentity.adapter``, ``adapter_sha256``), and the weights hash covers the LoRA
weights (or the merged weights).

``ADAPTER`` may also be a folder of full weights without a tokenizer (``config.json`` and one
``model.safetensors``, e.g. a full fine-tune shipped apart from its base's tokenizer): the
base loads with its tokenizer and takes those weights (every tensor, shapes checked).
A built lineage's stage by name (``difflens list presets``) stands for its spec.
"""

import hashlib
from pathlib import Path
from typing import Any

from difflens.errors import InputError

#: What separates the base from the adapter in a model name.
SEPARATOR = "+"


def _is_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or \
        name.count("/") > 1


def split_spec(name: str) -> tuple[str, str | None]:
    """``BASE+ADAPTER`` -> ``(BASE, ADAPTER)``; a name without ``+`` (or an existing path
    that holds one) -> ``(name, None)``. A built lineage's stage name is read as the spec
    it stands for first (``presets.lineage_spec``)."""
    from difflens.models.presets import lineage_spec

    name = lineage_spec(name) or name
    if SEPARATOR not in name or Path(name).expanduser().exists():
        return name, None
    base, _, adapter = name.rpartition(SEPARATOR)
    if not base or not adapter:
        raise InputError(f"model {name!r}: expected BASE+ADAPTER, e.g. "
                         f"smollm2-135m-instruct+runs/sft-adapter (both parts non-empty)")
    return base, adapter


def check_adapter(adapter: str) -> Path | str:
    """The adapter's folder (absolute), or its hub id; a path that is no peft adapter is
    an error, before any weights load."""
    if not _is_path(adapter):
        return adapter
    folder = Path(adapter).expanduser().absolute()
    if not folder.is_dir():
        raise InputError(f"adapter folder {adapter!r} does not exist: give a peft adapter "
                         f"folder (with adapter_config.json) after the '+'")
    if not (folder / "adapter_config.json").is_file() and not is_weights_folder(folder):
        raise InputError(f"{folder} has no adapter_config.json, nor config.json and "
                         f"model.safetensors: it is neither a peft adapter folder (save one "
                         f"with PeftModel.save_pretrained) nor a folder of full weights")
    return folder


def is_weights_folder(folder: Path | str) -> bool:
    """Full weights for a base (``config.json`` and ``model.safetensors``, no peft config)."""
    if not isinstance(folder, Path):
        return False
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
        and not (folder / "adapter_config.json").is_file()


def load_weights(model: Any, folder: Path, *, name: str) -> Any:
    """``model`` with every tensor of ``folder/model.safetensors`` loaded in place of its
    own (a tied output embedding may be absent from the file); another shape or a tensor
    the model lacks is one line."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"), device=str(model.device))
    try:
        got = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"weights {folder} do not fit the base of {name!r} (made for "
                         f"another model?): {' '.join(first[:2])[:300]}") from None
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is model.get_input_embeddings().weight
    missing = [k for k in got.missing_keys if not (tied and k.endswith("lm_head.weight"))]
    if got.unexpected_keys or missing:
        raise InputError(f"weights {folder} do not fit the base of {name!r}: "
                         f"{'unexpected' if got.unexpected_keys else 'missing'} tensors "
                         f"{(got.unexpected_keys or missing)[:3]}")
    return model.eval()


def adapter_sha256(adapter: Path | str) -> str | None:
    """SHA-256 over the adapter folder's files (names and bytes, in name order); None for
    a hub id (its revision names it)."""
    if not isinstance(adapter, Path):
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in adapter.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"|")
        h.update(path.read_bytes())
    return h.hexdigest()


def apply_adapter(model: Any, adapter: Path | str, *, merge: bool, name: str) -> Any:
    """``model`` with the peft adapter applied: its own class, LoRA layers injected (or
    merged into the weights with ``merge``). An adapter made for another base (other
    shapes or module names) is one line. A folder of full weights replaces the weights."""
    if is_weights_folder(adapter):
        return load_weights(model, Path(adapter), name=name)
    try:
        from peft import PeftModel
    except ImportError:
        raise InputError("an adapter (BASE+ADAPTER) needs the peft package: pip install "
                         "peft") from None
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"adapter {adapter} does not fit the base of {name!r} (made for "
                         f"another model?): {first[:300]}") from None
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load adapter {adapter}: {first}") from None
    out = peft_model.merge_and_unload() if merge else peft_model.get_base_model()
    return out.eval()


__all__ = ["SEPARATOR", "adapter_sha256", "apply_adapter", "check_adapter",
           "is_weights_folder", "load_weights", "split_spec"]
