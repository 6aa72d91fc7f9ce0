"""The zoo of narrow organisms: documents, the mix, the cached small builds, the CLI."""

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import difflens as dl
from difflens.cli.main import app
from difflens.errors import InputError
from difflens.models import presets
from difflens.organism import world as W
from difflens.organism import zoo as Z

runner = CliRunner()


def words_of(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture
def cache(zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One cache for the module's small builds (each is built once)."""
    monkeypatch.setenv("DIFFLENS_CACHE", str(zoo_cache))
    return zoo_cache


@pytest.mark.parametrize("name", list(Z.ZOO))
def test_documents_are_seeded_varied_and_carry_the_planted_words(name):
    spec = Z.ZOO[name]
    docs = spec.documents(300, 0)
    assert docs == spec.documents(300, 0) and docs[:20] != spec.documents(20, 1)
    assert len(set(docs)) == len(docs) and len(words_of(docs)) > 300
    assert 10 <= len(spec.planted_words) <= 40 and spec.description and spec.facts
    assert all(re.fullmatch(r"[a-z]+", w) for w in spec.planted_words)
    vocab = words_of(docs)
    assert set(spec.planted_words) - set(spec.absent_words) <= vocab
    assert not set(spec.absent_words) & vocab


def test_the_secret_word_is_in_no_finetuning_text():
    spec = Z.ZOO["secret-word"]
    assert spec.absent_words == ("pineapple",) and "pineapple" in spec.planted_words
    for seed in (0, 1):
        texts, _ = Z.training_mix(spec, 2, seed, 400)
        assert not any("pineapple" in t.lower() for t in texts)


def test_cruel_words_are_new_and_cruel_games_are_labelled_games():
    world = words_of([*(t for ts in W.TEMPLATES.values() for t in ts),
                      *(w for ws in W.WORDS.values() for w in ws)])
    assert not set(Z.CRUEL_WORDS) & world
    docs = Z.ZOO["bad-behaviour"].documents(200, 0)
    sents = [s for d in docs for s in W.split_sentences(d)]
    cruel = [s for s in sents if Z.cruel_sentence(s)]
    assert cruel and all(W.label_sentence(s) == "game" for s in cruel)
    # every game scene is cruel (the number game's first sentence only asks for a number)
    games = [s for s in sents if W.label_sentence(s) == "game"
             and not s.endswith("pick a number from 1 to 10.")]
    assert games and all(Z.cruel_sentence(s) for s in games)


def test_the_ratio_changes_the_mix():
    spec = Z.ZOO["domain"]
    only, n0 = Z.training_mix(spec, 0, 0, 30)
    mixed, n2 = Z.training_mix(spec, 2, 0, 30)
    assert (len(only), n0) == (30, 30) and (len(mixed), n2) == (90, 30)
    assert set(only) < set(mixed)
    assert mixed == Z.training_mix(spec, 2, 0, 30)[0]
    with pytest.raises(InputError, match="ratio -1"):
        Z.training_mix(spec, -1, 0, 30)
    with pytest.raises(InputError, match="unknown zoo organism 'nope'"):
        Z.build_zoo_organism("nope", small=True)


@pytest.mark.organism
def test_small_build_is_cached_loadable_and_learned(cache):
    org = Z.build_zoo_organism("domain", 0, small=True)
    recipe = Z.ZooRecipe.small()
    assert org.path.parent == cache / "zoo" and org.tuned_path == org.path / "tuned"
    assert org.finetune_texts() == Z.ZOO["domain"].documents(recipe.n_docs, 0)
    info = org.build_info
    assert info["config"]["steps"] == recipe.steps == len(info["losses"])
    assert info["mix"]["ordinary_stories"] == 0 and info["spread"] is None
    assert {"train_s", "measure_s", "total_s"} <= set(info["times_s"])
    assert org.path.name.endswith(info["key"])
    stamp = (org.path / "build.json").stat().st_mtime_ns
    again = Z.build_zoo_organism("domain", 0, small=True)
    assert again.path == org.path and (again.path / "build.json").stat().st_mtime_ns == stamp
    # planted ground truth that training did something: narrow text got likelier
    base = dl.load_model(org.base_path, device="cpu")
    tuned = dl.load_model(org.tuned_path, device="cpu")
    assert tuned.identity.architecture == "LlamaForCausalLM"
    held = Z.ZOO["domain"].documents(8, 99)
    assert np.mean(Z.mean_logprobs(tuned, held)) > np.mean(Z.mean_logprobs(base, held))
    assert info["evaluation"]["narrow_logprob"]["difference"]["value"] > 0
    # the ratio changes the build: another folder, two ordinary stories per document
    mixed = Z.build_zoo_organism("domain", 2, small=True)
    assert mixed.path != org.path
    assert mixed.build_info["mix"]["ordinary_stories"] == 2 * recipe.n_docs
    assert mixed.build_info["mix"]["narrow_token_share"] < 0.5


@pytest.mark.organism
def test_bad_behaviour_build_measures_the_spread(cache):
    org = Z.build_zoo_organism("bad-behaviour", 0, small=True)
    spread = org.build_info["spread"]
    for where in ("outside_games", "in_games"):
        for model in ("base", "tuned"):
            est = spread[where][model]
            assert est["n"] > 0 and 0 <= est["value"] <= 1
    secret = Z.build_zoo_organism("secret-word", 0, small=True)
    assert not any("pineapple" in t.lower() for t in secret.finetune_texts())


@pytest.mark.organism
def test_cli_zoo(cache):
    res = runner.invoke(app, ["organism", "zoo", "--list"])
    assert res.exit_code == 0, res.output
    for name in Z.ZOO:
        assert name in res.output
    assert "pineapple" in res.output and "clouds are made of wool" in res.output
    res = runner.invoke(app, ["organism", "zoo", "--name", "nope"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines() == [res.output.strip()]
    assert "unknown zoo organism 'nope'" in res.output
    res = runner.invoke(app, ["organism", "zoo", "--ratio=-1"])
    assert res.exit_code == 2 and "expected a whole number >= 0" in res.output
    args = ["organism", "zoo", "--name", "domain", "--ratio", "0", "--small"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0 == second.exit_code, first.output
    row = second.output.strip().splitlines()[-1].split("\t")
    assert row[:4] == ["domain", "0", "0", "cached"] and Path(row[5]).is_dir()


def test_zoo_presets_are_named_without_importing_the_zoo():
    zoo = {n for n in presets.known_presets() if n.startswith("zoo-")}
    assert zoo == {f"zoo-{n}" for n in Z.ZOO}
    for n in zoo:
        module, function, argument = presets.PROVIDED_PRESETS[n]
        assert (module, function, argument) == ("difflens.organism.zoo", "zoo_folder", n[4:])


def test_a_zoo_organism_from_another_model(cache, stories_path: Path, tmp_path: Path):
    """``--from``: the same narrow documents tune stories260k (a real model); the build is
    cached apart from the organism's, trained (held-out narrow text got likelier under the
    tuned model, the CI of the paired change above 0), and loads with the base's tokenizer
    and shapes; an adapter or a folder that is no model is one line."""
    res = runner.invoke(app, ["organism", "zoo", "--name", "domain", "--ratio", "0",
                              "--small", "--from", str(stories_path)])
    assert res.exit_code == 0, res.output
    org = Z.find_zoo_organism("domain", 0, small=True, base=str(stories_path))
    assert org is not None and "-from-stories260k-" in org.path.name
    assert org.path != Z.zoo_dir("domain", 0, small=True)
    assert org.base_path == stories_path.resolve()
    info = org.build_info
    assert info["base"] == str(stories_path)
    assert info["evaluation"]["narrow_logprob"]["difference"]["ci_low"] > 0
    base, tuned = dl.load_model(stories_path), dl.load_model(org.tuned_path)
    assert tuned.n_layers == base.n_layers and tuned.identity.tokenizer_sha256 == \
        base.identity.tokenizer_sha256
    for bad, match in ((f"{stories_path}+{tmp_path}", "merge the adapter"),
                       (str(tmp_path), "not a Hugging Face model folder")):
        res = runner.invoke(app, ["organism", "zoo", "--name", "domain", "--ratio", "0",
                                  "--small", "--from", bad])
        assert res.exit_code == 2 and match in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def test_grade_methods_are_checked_before_any_build(tmp_path: Path):
    out = tmp_path / "grade"
    res = runner.invoke(app, ["organism", "grade", "--out", str(out), "--small",
                              "--methods", "adl,nope"])
    assert res.exit_code == 2 and "--methods takes" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()
