"""What ``difflens compare`` takes besides the models: its inputs (:class:`CompareInputs`),
its options (:class:`CompareConfig`, one table per section in ``compare.toml``) and the
check that refuses an option a section does not have."""

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from difflens.errors import InputError
from difflens.inputs.labelled import LabelledText

SECTIONS = ("capture", "concepts", "trajectories", "collapse", "control", "themes")
COLLAPSE_STEPS = ("probes", "temperature", "attractors", "diversity")


@dataclasses.dataclass(frozen=True)
class CompareInputs:
    """What the sections run on: the built-in defaults (:mod:`difflens.inputs.builtin`) or
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


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Which sections run and every section's options (a ``compare.toml`` table each)."""

    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    capture: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of :func:`difflens.capture.capture` (e.g. ``store_dtype``)."""
    concepts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of :func:`difflens.pipelines.concepts.run_concepts`."""
    trajectories: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of :func:`difflens.pipelines.trajectories.run_trajectories`."""
    collapse: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of :class:`difflens.pipelines.collapse.CollapseConfig` (and ``steps``)."""
    control: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of :class:`difflens.control.evaluate.ControlConfig` (``max_new_tokens``,
    ``batch_size`` for its generation)."""
    themes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of :class:`difflens.pipelines.theme_config.ThemesConfig`."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise InputError(f"unknown section(s) {bad}; sections are {', '.join(SECTIONS)}")
        for section in SECTIONS:
            check_options(section, getattr(self, section), "CompareConfig")


def _option_names(section: str) -> set[str]:
    from difflens.capture import capture
    from difflens.control.evaluate import ControlConfig
    from difflens.pipelines.collapse import CollapseConfig
    from difflens.pipelines.concepts import run_concepts
    from difflens.pipelines.theme_config import ThemesConfig
    from difflens.pipelines.trajectories import run_trajectories

    def kwargs(fn: Callable[..., Any], drop: Sequence[str]) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind == p.KEYWORD_ONLY and p.name not in drop}

    return {
        "capture": kwargs(capture, ("store", "progress", "engine")),
        "concepts": kwargs(run_concepts, ("progress", "index")),
        "trajectories": kwargs(run_trajectories, ("progress", "index", "metadata")),
        "collapse": {f.name for f in dataclasses.fields(CollapseConfig)} - {"prompts"}
        | {"steps"},
        "control": ({f.name for f in dataclasses.fields(ControlConfig)} - {"generation"})
        | {"max_new_tokens", "batch_size"},
        "themes": {f.name for f in dataclasses.fields(ThemesConfig)} - {"prompts", "truth"},
    }[section]


def check_options(section: str, options: Mapping[str, Any], where: str) -> None:
    """Refuse an option the section does not have, naming ``where`` and the valid ones."""
    unknown = sorted(set(options) - _option_names(section))
    if unknown:
        raise InputError(f"{where}: [{section}] has no option {', '.join(unknown)}; its options "
                         f"are {', '.join(sorted(_option_names(section)))}")


def read_compare_config(path: str | Path) -> dict[str, Any]:
    """Read ``compare.toml``: one table per section (``[collapse]``, ``[concepts]``, ...)
    with that section's options, and optional top-level ``sections`` and ``seed``.

    Returns keyword arguments of :class:`CompareConfig`. Raises :class:`InputError` with the
    file (and line, for a syntax error) on anything it cannot use.
    """
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such config file; write one table per section, e.g. "
                         f"[collapse] k_samples = 8")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{p}: {key} must be a table ([{key}]) of options")
            check_options(key, value, str(p))
            out[key] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        elif key == "sections":
            if not isinstance(value, list):
                raise InputError(f"{p}: sections must be a list, e.g. sections = "
                                 f"[\"collapse\", \"concepts\"]")
            out["sections"] = tuple(value)
        elif key == "seed":
            out["seed"] = int(value)
        else:
            raise InputError(f"{p}: unknown key {key!r}; use sections, seed or a table per "
                             f"section ({', '.join(SECTIONS)})")
    return out
