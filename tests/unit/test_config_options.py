"""One pipeline shape, defaults in one place: each instrument's CLI options and its
``compare.toml`` table are its config's fields, under the same names and defaults."""

import dataclasses
from typing import Any

import pytest
import typer

from difflens._config import config_from, options_of
from difflens.cli.main import app
from difflens.control.evaluate import ControlConfig
from difflens.control.state_probe import ProbeConfig
from difflens.errors import DifflensWarning, InputError
from difflens.pipelines.collapse import CollapseConfig
from difflens.pipelines.compare_config import CompareConfig
from difflens.pipelines.concepts import ConceptsConfig
from difflens.pipelines.theme_config import ThemesConfig
from difflens.pipelines.trajectories import TrajectoriesConfig

COMMANDS = {
    ("trajectories", "run"): TrajectoriesConfig,
    ("concepts", "steer"): ConceptsConfig,
    ("collapse", "all"): CollapseConfig,
    ("themes", "all"): ThemesConfig,
    ("control", "evaluate"): ControlConfig,
    ("control", "train-probe"): ProbeConfig,
}


def _command(path: tuple[str, ...]) -> Any:
    cmd: Any = typer.main.get_command(app)  # typer's own (vendored) click types
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Any:
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _walk(sub, (*path, name))


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_config_field_is_the_commands_option_with_its_default(path):
    cls = COMMANDS[path]
    params = {opt: p for p in _command(path).params for opt in p.opts}
    opts = options_of(cls)
    assert opts, f"{cls.__name__} declares no options"
    for key, opt in opts.items():
        flag = opt.flag.split("/")[0]
        if not opt.cli:
            assert flag not in params  # e.g. steps: the command's verb chooses them
            continue
        assert flag in params, f"{cls.__name__}.{opt.field}: no {flag} on {' '.join(path)}"
        got = params[flag].default
        want = (opt.to_text(opt.default) if opt.parse is not None or opt.is_sequence
                else opt.default)
        assert got == want, (flag, got, want)
        assert params[flag].help == opt.help
        # the same name reads the same field in the TOML
        value = opt.from_text(got) if isinstance(got, str) and opt.is_sequence else opt.default
        assert config_from(cls, {key: value}, where="t") == cls()


def test_model_has_one_meaning_in_every_command():
    """``--model`` is a model of the run, ``[NAME=]MODEL``, wherever it is taken."""
    seen = []
    for path, cmd in _walk(typer.main.get_command(app)):
        for p in cmd.params:
            if "--model" in p.opts and not getattr(p, "hidden", False):
                seen.append(" ".join(path))
                assert "[NAME=]MODEL" in (p.help or "") or "NAME=MODEL" in (p.help or ""), (
                    path, p.help)
    assert {"trajectories run", "concepts steer", "collapse all", "themes all",
            "control evaluate", "control train-probe", "compare"} <= set(seen)


def test_config_from_reads_cli_names_and_refuses_the_rest():
    cfg = config_from(ControlConfig, {"samples": 3, "max-new-tokens": 7,
                                      "controllers": "rollback=1,2", "chat": True},
                      where="t.toml [control]", base=ControlConfig.quick())
    assert cfg.k_samples == 3 and cfg.gains == (("rollback", (1.0, 2.0)),)
    assert cfg.generation.max_new_tokens == 7 and cfg.generation.chat
    assert cfg.generation.batch_size == ControlConfig.quick().generation.batch_size
    assert config_from(ConceptsConfig, {"layers": "0,3", "alphas": [1, 2]},
                       where="t").layers == (0, 3)
    with pytest.raises(InputError, match=r"t.toml \[control\]: no option 'gain'; the options "
                       r"are controllers, samples"):
        config_from(ControlConfig, {"gain": 1}, where="t.toml [control]")
    with pytest.warns(DifflensWarning, match="continuations is deprecated; use samples"):
        assert config_from(TrajectoriesConfig, {"continuations": 2},
                           where="t").continuations == 2
    with pytest.raises(InputError, match="--method must be umap or pca"):
        config_from(TrajectoriesConfig, {"method": "tsne"}, where="t")


def test_compare_runs_each_sections_visible_quick_preset():
    cfg = CompareConfig(seed=5)
    for name, cls in (("collapse", CollapseConfig), ("concepts", ConceptsConfig),
                      ("trajectories", TrajectoriesConfig), ("control", ControlConfig),
                      ("themes", ThemesConfig)):
        assert getattr(cfg, name) == dataclasses.replace(cls.quick(), seed=5)
    # the three silent differences of earlier releases are now the preset's, by name
    assert cfg.concepts.position == "last" and ConceptsConfig().position == "answer"
    assert cfg.concepts.test_fraction == 0.3 and ConceptsConfig().test_fraction == 0.2
    assert cfg.themes.k_samples == 8 and ThemesConfig().k_samples == 16
    with pytest.raises(InputError, match="CompareConfig.themes takes a ThemesConfig"):
        CompareConfig(themes=ConceptsConfig())


def test_compare_help_shows_the_toml_table_names():
    """The help's markup once ate ``[collapse]`` (a rich style tag); it is escaped."""
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "([collapse], [concepts], ...)" in res.output
