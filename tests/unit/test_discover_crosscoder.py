"""discover's dictionary methods on a pair with a planted change: a tiny Llama and a copy
whose embeddings of a quarter of the words (``TRIGGERS``) gain ``strength * u``, ``u`` the
planted words' unembedding, so at captured layer 2 ``h_tuned - h_base`` is ~``u`` on those
tokens and ~0 elsewhere. The crosscoder has a latent whose decoder difference is ``u`` (its
classes and Latent Scaling are reported as found); the SAE on differences ranks a latent
along ``u`` first and reads the planted words through its lens; a run killed during
training resumes to the same summary."""

import copy
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.analysis.crosscoder import load_crosscoder
from difflens.models.loading import wrap_model
from difflens.models.pair import ModelPair
from difflens.models.tiny import PLANTED_WORDS, filler_words, tiny_model, word_tokenizer
from difflens.pipelines import discover_crosscoder as DC
from difflens.pipelines.discover import DiscoverConfig, run_discover

PLANTED = list(PLANTED_WORDS)
TRIGGERS = filler_words()[::4]
CONFIG = DiscoverConfig(methods=("crosscoder", "diff_sae"), n_words=10, samples=2,
                        max_new_tokens=5, n_boot=50, crosscoder_tokens=300_000)


def planted_pair(strength: float = 0.5) -> tuple[ModelPair, torch.Tensor]:
    """The pair and the planted direction ``u`` (unit norm, the planted words' centred
    unembedding): the tuned copy's embeddings of ``TRIGGERS`` (a quarter of the filler
    words, so the states the shift rides on are diverse) gain ``strength * u`` (about 4
    times a state's norm), which the residual stream carries to layer 2."""
    tok = word_tokenizer(filler_words() + PLANTED)
    base = tiny_model(0, n_layers=4, d_model=32, tokenizer=tok, name="planted-base")
    model = copy.deepcopy(base.model)
    ids = tok.convert_tokens_to_ids(PLANTED)  # type: ignore[attr-defined]
    head = model.lm_head.weight.detach()
    u = head[ids].sum(0) - len(ids) * head.mean(0)
    u = u / u.norm()
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.convert_tokens_to_ids(TRIGGERS)] += strength * u  # type: ignore[attr-defined]
    return ModelPair(base, wrap_model(model, tok, name="planted-tuned")), u


def inputs() -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(0)
    words = filler_words()
    texts = [" ".join(rng.choice(words) for _ in range(24)) for _ in range(40)]
    openings = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(3)]
    finetune = []
    for i in range(16):  # one planted word in each: rare, so its shift dominates its latent
        text = [rng.choice(words) for _ in range(24)]
        text[rng.randrange(24)] = PLANTED[i % len(PLANTED)]
        finetune.append(" ".join(text))
    return texts, openings, finetune


def _run(out: Path) -> dict:
    pair, _ = planted_pair()
    texts, openings, finetune = inputs()
    return run_discover(pair, out, CONFIG, texts=texts, openings=openings,
                        finetune_texts=finetune, planted=PLANTED, index=False).summary()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dictionaries") / "run"
    return {"summary": _run(out), "out": out}


def _cosines(out: Path, section: dict, method: str, u: torch.Tensor, rows: list[int]
             ) -> list[float]:
    """|cos| of each latent's decoder difference (the SAE's decoder) with ``u``."""
    model = load_crosscoder(out / section["checkpoint"])
    dec = model.W_dec.detach()[rows] / torch.tensor(model.scales)[None, :, None]
    d = dec[:, 1] - dec[:, 0] if method == "crosscoder" else dec[:, 0]
    return (torch.nn.functional.cosine_similarity(d, u[None], dim=-1)).abs().tolist()


def test_the_crosscoder_has_a_latent_along_the_planted_direction(run):
    d = run["summary"]["discover"]["crosscoder"]
    assert d["n_latents"] == 8 * 32 and d["l0"] > 0 and d["dead"] >= 0
    assert set(d["variance_explained"]) == {"base", "tuned"}
    assert min(d["variance_explained"].values()) > 0.8
    assert sum(d["classes"].values()) == d["fired"]
    assert d["removed_by_scaling"] == d["classes"]["tuned-only"] - d["kept"]
    assert len(d["latents"]) == min(d["kept"], DC.TOP_LATENTS)
    assert all(r["delta"] < 0.1 and r["nu_reconstruction"] < 0.2 for r in d["latents"])
    df = pd.read_parquet(run["out"] / "data" / "crosscoder_latents.parquet")
    _, u = planted_pair()
    cos = _cosines(run["out"], d, "crosscoder", u, [int(x) for x in df["latent"]])
    assert max(cos) > 0.9, sorted(cos)[-5:]


def test_the_sae_on_differences_finds_the_planted_direction(run):
    d = run["summary"]["discover"]["diff_sae"]
    assert set(d["variance_explained"]) == {"difference"} and "classes" not in d
    _, u = planted_pair()
    cos = _cosines(run["out"], d, "diff_sae", u, [r["latent"] for r in d["latents"]])
    assert cos[0] > 0.75, cos  # each trigger word keeps a token-specific part too
    assert len(set(PLANTED) & set(d["latents"][0]["lens_words"][:5])) >= 2
    assert set(PLANTED) & set(d["top_words"][:5]), d["top_words"]
    ex = d["latents"][0]["examples"][0]
    assert len(ex["tokens"]) == len(ex["activations"]) == len(ex["positions"])
    assert max(ex["activations"]) == pytest.approx(ex["max"])
    assert ex["tokens"][ex["activations"].index(ex["max"])] in TRIGGERS


def test_outputs_follow_the_convention(run):
    out, s = run["out"], run["summary"]
    assert {"crosscoder", "diff_sae", "logodds", "hypothesis"} <= set(s["discover"])
    assert "adl" not in s["discover"]
    assert set(s["discover"]["planted"]["share"]) >= {"crosscoder", "diff_sae"}
    for method in ("crosscoder", "diff_sae"):
        for table in ("latents", "examples"):
            assert (out / "data" / f"{method}_{table}.parquet").is_file()
        df = pd.read_parquet(out / "data" / f"{method}_latents.parquet")
        assert len(df) == s["discover"][method]["fired"] and df["fired"].min() > 0
    assert json.loads((out / "summary.json").read_text())["discover"]["crosscoder"]
    assert (out / "crosscoder_states" / "index.json").is_file()


def test_a_killed_run_resumes_to_the_same_summary(run, tmp_path, monkeypatch):
    real = DC.train_crosscoder

    def killed(*args, progress=None, **kwargs):  # type: ignore[no-untyped-def]
        steps = [0]

        def tick(n: int, info: str = "") -> None:
            steps[0] += n
            if steps[0] == DC.CHECKPOINT_EVERY + 50:
                raise KeyboardInterrupt

        return real(*args, progress=tick, **kwargs)

    monkeypatch.setattr(DC, "train_crosscoder", killed)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(out)
    ckpt = json.loads(next(out.glob("crosscoder/checkpoint-*/state.json")).read_text())
    assert ckpt["step"] == DC.CHECKPOINT_EVERY
    monkeypatch.setattr(DC, "train_crosscoder", real)
    again = _run(out)["discover"]
    first = run["summary"]["discover"]
    for method in ("crosscoder", "diff_sae"):
        assert json.dumps(again[method], sort_keys=True) == json.dumps(first[method],
                                                                       sort_keys=True)


def test_the_config_scales_to_the_model():
    c = DC.crosscoder_config(128, 12_000, 1_000_000, 0)
    assert (c.expansion, c.k, c.batch_size, c.steps) == (8, 32, 256, 3906)
    small = DC.crosscoder_config(32, 100, 1_000, 0)
    assert small.batch_size == 100 and small.k == 8 and small.token_budget == 1_000
    assert np.isclose(small.dead_tokens, 100)
