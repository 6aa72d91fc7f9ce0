"""Where a model's weights sit and in what precision: devices, dtypes, accelerate device
maps (and the hooks they leave on the modules), and bitsandbytes quantization."""

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from difflens.errors import InputError

#: ``device_map`` strategies accelerate plans itself (besides a single device or a dict).
DEVICE_MAP_STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
#: bitsandbytes loading modes (``quantization=``, CLI ``--quantize``).
QUANTIZATIONS: tuple[str, ...] = ("8bit", "4bit")


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


def offloaded_weights(model: torch.nn.Module) -> dict[str, tuple[Mapping[str, Any], str]]:
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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
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


def dtype_name(dtype: torch.dtype) -> str:
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


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(quantization: str | None, device: str,
                         dtype: torch.dtype) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``"8bit"`` or ``"4bit"`` (``None``: none)."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {quantization!r}: expected one of "
                         f"{', '.join(QUANTIZATIONS)}")
    if not has_bitsandbytes():
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
