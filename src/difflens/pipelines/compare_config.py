"""What ``difflens compare`` takes besides the models: its inputs (``CompareInputs``),
its options (``CompareConfig``, one table per section in ``compare.toml``, each read
into that section's config under the command line's names) and the check that refuses an
option a section does not have."""

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from difflens._config import config_from, read_toml
from difflens.errors import InputError
from difflens.inputs.labelled import LabelledText

SECTIONS = ("capture", "concepts", "trajectories", "collapse", "control", "themes",
            "discover")


@dataclasses.dataclass(frozen=True)
class CompareInputs:
    """What the sections run on: the built-in defaults (``difflens.inputs.builtin``) or
    a world's own texts (the organism's)."""

    texts: tuple[str, ...]
    """Capture: texts every model scores (KL and entropy per token)."""
    prompts: tuple[str, ...]
    """Collapse: prompts for attractors and diversity."""
    trajectory_prompts: tuple[str, ...]
    concept_items: str
    """Concepts: an A/B item file (JSONL)."""
    control_examples: tuple[LabelledText, ...]
    """Control: labelled texts the state probe learns (1 = the behaviour to steer away)."""
    control_prompts: tuple[str, ...]
    theme_prompts: tuple[str, ...]
    probes: str | None = None
    """Collapse: a probe file (None: the built-in probes)."""
    reference: tuple[str, ...] | None = None
    reference_name: str = ""
    tree_prompt: str = ""
    theme_truth: Any = None
    """Themes: the world's true theme chains (the organism), or None."""
    control_measure: Callable[[Sequence[str]], list[bool]] | None = None
    control_measure_name: str = ""
    control_source: str = ""
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Each input's description for the page (``texts``, ``concepts``, ...)."""


#: section -> (module, config class) of every instrument section's config.
_CONFIGS = {
    "concepts": ("difflens.pipelines.concepts", "ConceptsConfig"),
    "trajectories": ("difflens.pipelines.trajectories", "TrajectoriesConfig"),
    "collapse": ("difflens.pipelines.collapse", "CollapseConfig"),
    "control": ("difflens.control.evaluate", "ControlConfig"),
    "themes": ("difflens.pipelines.theme_config", "ThemesConfig"),
    "discover": ("difflens.pipelines.discover", "DiscoverConfig"),
}


def config_class(section: str) -> type:
    """The config class of an instrument section (``collapse`` -> ``CollapseConfig``)."""
    import importlib

    module, name = _CONFIGS[section]
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def quick(section: str, seed: int = 0) -> Any:
    """The section's config as ``difflens compare`` runs it by default: the config's
    ``quick`` preset (lighter than the standalone command's defaults, and visible
    there), with ``seed``."""
    cls: Any = config_class(section)
    return dataclasses.replace(cls.quick(), seed=seed)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Which sections run and every section's config (a ``compare.toml`` table each).

    A section left out is its config's ``quick()`` preset with this ``seed``. A mapping of
    options (``{"samples": 4}``, the TOML's names) is read into that preset too.
    """

    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    capture: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of ``difflens.capture.capture`` (e.g. ``store_dtype``)."""
    concepts: Any = None
    """A ``ConceptsConfig`` (default: its ``quick()``)."""
    trajectories: Any = None
    """A ``TrajectoriesConfig`` (default: its
    ``quick()``)."""
    collapse: Any = None
    """A ``CollapseConfig`` (default: its ``quick()``)."""
    control: Any = None
    """A ``ControlConfig`` (default: its ``quick()``)."""
    themes: Any = None
    """A ``ThemesConfig`` (default: its ``quick()``)."""
    discover: Any = None
    """A ``DiscoverConfig`` (default: its ``quick()``)."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise InputError(f"unknown section(s) {bad}; sections are {', '.join(SECTIONS)}")
        check_capture_options(self.capture, "CompareConfig")
        for section in _CONFIGS:
            value = getattr(self, section)
            base = quick(section, self.seed)
            if value is None:
                value = base
            elif isinstance(value, Mapping):
                value = config_from(config_class(section), value,
                                    where=f"CompareConfig.{section}", base=base)
            elif not isinstance(value, config_class(section)):
                raise InputError(f"CompareConfig.{section} takes a "
                                 f"{config_class(section).__name__} or a mapping of its "
                                 f"options, got {type(value).__name__}")
            object.__setattr__(self, section, value)


def _capture_options() -> set[str]:
    from difflens.capture import capture

    return {p.name for p in inspect.signature(capture).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name not in ("store", "progress", "engine")}


def check_capture_options(options: Mapping[str, Any], where: str) -> None:
    """Refuse an option the capture section does not have, naming ``where``."""
    unknown = sorted(set(options) - _capture_options())
    if unknown:
        raise InputError(f"{where}: [capture] has no option {', '.join(unknown)}; its options "
                         f"are {', '.join(sorted(_capture_options()))}")


def read_compare_config(path: str | Path) -> dict[str, Any]:
    """Read ``compare.toml``: one table per section (``[collapse]``, ``[concepts]``, ...)
    with that section's options under their command-line names (``samples``,
    ``max_new_tokens``; see ``difflens <section> ... --help``), and optional top-level
    ``sections`` and ``seed``.

    Returns keyword arguments of ``CompareConfig`` (each section's table as a mapping of
    options, checked against its config; ``CompareConfig`` reads it into the section's
    ``quick()`` preset). Raises ``InputError`` with the file (and line, for a syntax
    error) on anything it cannot use.
    """
    p = Path(path)
    raw = read_toml(p, example="one table per section, [collapse] samples = 8")
    out: dict[str, Any] = {}
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise InputError(f"{p}: seed must be an integer, e.g. seed = 1")
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{p}: {key} must be a table ([{key}]) of options")
            if key == "capture":
                check_capture_options(value, str(p))
                out[key] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
            else:  # checked here, naming the file; CompareConfig reads it into the preset
                config_from(config_class(key), value, where=f"{p} [{key}]",
                            base=quick(key, seed))
                out[key] = dict(value)
        elif key == "sections":
            if not isinstance(value, list):
                raise InputError(f"{p}: sections must be a list, e.g. sections = "
                                 f"[\"collapse\", \"concepts\"]")
            out["sections"] = tuple(value)
        elif key == "seed":
            out["seed"] = seed
        else:
            raise InputError(f"{p}: unknown key {key!r}; use sections, seed or a table per "
                             f"section ({', '.join(SECTIONS)})")
    return out
