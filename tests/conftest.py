"""Shared fixtures: tiny config-built models (nothing downloaded) and the shared data."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_model, tiny_pair

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STORIES = SHARED / "models" / "stories260k"
#: How to get the shared data, for the messages of tests that need it.
GET_SHARED = "put the project's shared/ folder beside the repo (../shared/data)"


def require(condition: bool, what: str) -> None:
    """Stop a test whose data or optional package is missing: fail under CI (``CI`` set to
    any non-empty value), skip elsewhere. ``what`` is one line: what is missing and how to
    get it."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


@pytest.fixture(name="require")
def require_fixture() -> Callable[[bool, str], None]:
    """:func:`require`, for test modules (they take the fixture, not an import of conftest)."""
    return require


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test gets its own difflens cache unless it sets one."""
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def organism_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A difflens cache holding the reduced organism (seed 0), built once per test run by
    ``difflens organism build --small`` on an empty cache; returns the cache and the
    command's output (the CLI test reads it)."""
    from typer.testing import CliRunner

    from difflens.cli.main import app

    cache = tmp_path_factory.mktemp("organism-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLENS_CACHE", str(cache))
        res = CliRunner().invoke(app, ["organism", "build", "--small"])
    assert res.exit_code == 0, res.output
    return cache, res.output


@pytest.fixture
def small_organism(organism_build: tuple[Path, str], monkeypatch: pytest.MonkeyPatch):
    """The reduced organism of :func:`organism_build`, with the test's cache set to the one
    that holds it (so presets and the demo find it without building). Tests that damage a
    build or need a fresh one build their own in the isolated cache instead."""
    from difflens.organism import build as B

    monkeypatch.setenv("DIFFLENS_CACHE", str(organism_build[0]))
    return B.find_organism(B.OrganismConfig.small(0))


@pytest.fixture
def prompts() -> list[str]:
    return list(EXAMPLE_PROMPTS)


@pytest.fixture
def tiny():
    return tiny_model(0)


@pytest.fixture
def pair():
    return tiny_pair(0, planted_block=2, scale=3.0)


@pytest.fixture
def stories_path() -> Path:
    require((STORIES / "config.json").is_file(),
            f"shared data not found at {STORIES}: {GET_SHARED}")
    return STORIES


@pytest.fixture
def tiny_folder(tmp_path: Path, tiny) -> Path:
    """The tiny model saved as a normal HF folder."""
    folder = tmp_path / "tiny-model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def pair_folders(tmp_path: Path, pair) -> dict[str, Path]:
    """The planted tiny pair saved as two normal HF folders (label -> folder)."""
    folders = {}
    for label, lm in pair.models.items():
        folders[label] = tmp_path / label
        lm.model.save_pretrained(folders[label])
        lm.tokenizer.save_pretrained(folders[label])
    return folders
