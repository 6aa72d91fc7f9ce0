"""The shipped organism: one build of the default recipe, weights and all, that difflens
carries and loads by default, so that every machine runs the same organism.

Training the organism is deterministic on one machine but not across CPUs: another CPU's
kernels sum in another order, the base's validation loss moves in the 4th digit, and RL
amplifies that into different findings (issue 27: rl-from-base's celebration share 1.00 on
one machine, 0.00 on another). So the demo, the presets ``organism-*`` and the docs read this
build; ``difflens organism build`` still trains from scratch, stores its result under its
own weights' hash (``weights_id``) and says how far it lands from this one
(``distance_to_shipped``).

``manifest.json`` beside the build holds each model's weights hash (``models.identity.
weights_sha256``: every tensor's name, dtype, shape and bytes), the organism id made from
them, and a SHA-256 of every shipped file.
"""

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from difflens._io import fingerprint
from difflens.organism.config import MODEL_FOLDERS, PROPERTY_LABELS, OrganismConfig

#: Where the shipped builds live inside the installed package.
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
#: The shipped builds: the default recipe (seed 0), and the reduced one the tests and
#: ``difflens demo --small`` run on (so that no test depends on one training run's luck).
SHIPPED_CONFIGS = {"default": OrganismConfig(seed=0), "small": OrganismConfig.small(0)}
#: The default shipped build and its recipe.
SHIPPED_DIR = SHIPPED_ROOT / "default"
SHIPPED_CONFIG = SHIPPED_CONFIGS["default"]


def shipped_dir(config: OrganismConfig) -> Path | None:
    """The shipped build of ``config``, or None when difflens ships none for it."""
    for name, shipped in SHIPPED_CONFIGS.items():
        if shipped == config:
            return SHIPPED_ROOT / name
    return None
#: The properties whose difference ``distance_to_shipped`` reports (``properties.json``).
COMPARED = ("reward", "entropy", "celebration_share", "chance_tvd")


def weights_id(weights: Mapping[str, str]) -> str:
    """The organism's id: ``w`` and 12 hex digits of the fingerprint of its models' weights
    hashes (``{lineage name: weights_sha256}``). Two builds share an id only when every
    model's weights are the same bytes."""
    return "w" + fingerprint(dict(sorted(weights.items())), length=12)


def model_weights(folder: Path) -> dict[str, str]:
    """Each lineage model's ``weights_sha256`` (``models.identity``, the one weights
    fingerprint: the loaded state dict's names, dtypes, shapes and bytes), by lineage name."""
    from transformers import AutoModelForCausalLM

    from difflens.models.identity import weights_sha256
    from difflens.models.presets import quiet_transformers

    out = {}
    for name, sub in MODEL_FOLDERS.items():
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(folder / sub, dtype="float32")
        out[name] = weights_sha256(model)
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative POSIX path -> hex), the manifest
    left out."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def manifest(folder: Path = SHIPPED_DIR) -> dict[str, Any]:
    """A shipped build's ``manifest.json`` (default: the default recipe's)."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped organism is missing ({path}); reinstall difflens, or build one "
            f"with: difflens organism build")
    return dict(json.loads(path.read_text()))


def write_manifest(folder: Path, config: OrganismConfig) -> dict[str, Any]:
    """Write ``folder/manifest.json`` for a finished build of ``config`` about to be
    shipped."""
    from difflens._io import write_json_atomic

    weights = model_weights(folder)
    data = {"organism_id": weights_id(weights), "weights_sha256": weights,
            "config_key": config.key(), "files_sha256": file_hashes(folder)}
    write_json_atomic(folder / "manifest.json", data)
    return data


def distance_to_shipped(folder: Path, shipped: Path = SHIPPED_DIR) -> dict[str, Any]:
    """How far the build at ``folder`` lands from the shipped one (``shipped``, the shipped
    build of the same recipe): per model, the largest
    absolute weight difference and the relative L2 distance ``‖w - w_shipped‖ / ‖w_shipped‖``
    over all tensors, and per model and property (``COMPARED``) the two measured values and
    their difference."""
    import torch
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for name, sub in MODEL_FOLDERS.items():
        a = load_file(folder / sub / "model.safetensors")
        b = load_file(shipped / sub / "model.safetensors")
        if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
            weights[name] = {"comparable": False}
            continue
        diff2 = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
        norm2 = sum(float((b[k].double() ** 2).sum()) for k in b)
        weights[name] = {
            "comparable": True,
            "max_abs": max(float((a[k] - b[k]).abs().max()) for k in a),
            "relative_l2": (diff2 / norm2) ** 0.5 if norm2 else float("nan"),
            "identical": all(torch.equal(a[k], b[k]) for k in a)}
    mine = json.loads((folder / "properties.json").read_text())
    theirs = json.loads((shipped / "properties.json").read_text())
    props: dict[str, Any] = {}
    for name, label in PROPERTY_LABELS.items():
        props[name] = {}
        for key in COMPARED:
            if label in mine and label in theirs:
                x, y = mine[label][key]["value"], theirs[label][key]["value"]
                props[name][key] = {"built": x, "shipped": y, "difference": x - y}
    return {"weights": weights, "properties": props}
