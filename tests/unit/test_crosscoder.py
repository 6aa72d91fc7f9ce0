"""The crosscoder module: planted shared, base-only and tuned-only directions are recovered
and classed by decoder norm, Latent Scaling flags a "tuned-only" latent the base carries, a
killed run resumes to the weights of an uninterrupted one, and bad input is one line."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from difflens.analysis.crosscoder import (
    Crosscoder,
    CrosscoderConfig,
    latent_classes,
    latent_scaling,
    load_crosscoder,
    train_crosscoder,
    train_diff_sae,
)
from difflens.errors import InputError


def _directions(n: int, d: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=1, keepdim=True)


def _planted(dirs: torch.Tensor, n_shared: int, n_base: int, batch: int, p: float, seed: int):
    """``batch_at(step)``: each direction on with probability ``p`` and a coefficient in
    [1, 3]; shared ones in both streams (same coefficient), the next ``n_base`` in the base
    stream only, the rest in the tuned stream only; a little isotropic noise."""
    s, b = n_shared, n_shared + n_base

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        on = torch.rand(batch, len(dirs), generator=g) < p
        c = on * (1 + 2 * torch.rand(batch, len(dirs), generator=g))
        noise = 0.01 * torch.randn(2, batch, dirs.shape[1], generator=g)
        shared = c[:, :s] @ dirs[:s]
        return shared + c[:, s:b] @ dirs[s:b] + noise[0], shared + c[:, b:] @ dirs[b:] + noise[1]
    return batch_at


def _best_cosines(dec: torch.Tensor, dirs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per planted direction: the latent whose decoder (``[latent, d]``) is closest, and the
    cosine."""
    unit = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (dirs @ unit.T).numpy()
    best = cos.argmax(1)
    return best, cos[np.arange(len(dirs)), best]


def test_planted_directions_are_recovered_and_classed_by_decoder_norm():
    d, n_shared, n_base, n_tuned = 32, 8, 4, 4
    dirs = _directions(n_shared + n_base + n_tuned, d, seed=1)
    batch_at = _planted(dirs, n_shared, n_base, batch=256, p=0.1, seed=2)
    cfg = CrosscoderConfig(expansion=2, k=2, aux_k=16, dead_tokens=256 * 50, lr=3e-3,
                           warmup_steps=50, batch_size=256, token_budget=256 * 800,
                           threshold_beta=0.98)
    held_out = [_planted(dirs, n_shared, n_base, 256, 0.1, seed=3)(s) for s in range(4)]
    result = train_crosscoder(batch_at, d, 2, cfg, held_out=held_out)
    assert len(result.losses) == 800 and result.scored_on == "held-out"
    assert np.mean(result.losses[-50:]) < np.mean(result.losses[:50]) / 3
    assert min(result.variance_explained) > 0.85, result.variance_explained
    assert 1.0 < result.l0 < 4.0, result.l0

    classes = latent_classes(result.model)
    dec = result.model.W_dec.detach()
    groups = {"shared": (slice(0, n_shared), 1), "base-only": (slice(n_shared, 12), 0),
              "tuned-only": (slice(12, 16), 1)}
    for label, (rows, stream) in groups.items():
        best, cos = _best_cosines(dec[:, stream], dirs[rows])
        found = (cos > 0.9) & (classes.labels[best] == label)
        # every planted direction has a latent within cos 0.9, classed as planted (margin:
        # at most one miss per kind)
        assert found.sum() >= len(found) - 1, (label, cos, classes.delta[best])


def _hand_built() -> Crosscoder:
    """Stream 0 is the base, 1 the tuned model. Latents 0, 1, 2 have a tuned decoder only
    (e0, e1, e2: all tuned-only by norm); latent 3 is base-only with e2."""
    cc = Crosscoder(8, 2, 4, k=1)
    e = torch.eye(8)
    with torch.no_grad():
        for p in cc.parameters():
            p.zero_()
        for j in range(3):
            cc.W_enc[1, :, j], cc.W_dec[j, 1] = e[j], e[j]
        cc.W_enc[0, :, 3], cc.W_dec[3, 0] = e[2], e[2]
    cc.threshold = 0.1
    return cc


def _hand_batches(n_batches: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Tuned: a e0 + b e1 + c e2; base: a e0 + c e2 (e0 in the base but no base latent reads
    it: the error holds it; e2 in the base rebuilt by latent 3); plus noise."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n_batches):
        c = (torch.rand(batch, 3, generator=g) < 0.3) * (0.5 + 1.5 * torch.rand(batch, 3,
                                                                               generator=g))
        noise = 0.01 * torch.randn(2, batch, 8, generator=g)
        tuned = torch.zeros(batch, 8)
        tuned[:, :3] = c
        base = tuned.clone()
        base[:, 1] = 0
        out.append((base + noise[0], tuned + noise[1]))
    return out


def test_latent_scaling_flags_tuned_only_latents_the_base_carries():
    cc = _hand_built()
    classes = latent_classes(cc)
    assert list(classes.labels) == ["tuned-only"] * 3 + ["base-only"]  # norms alone

    batches = _hand_batches(4, 250)
    ls = latent_scaling(cc, batches, [0, 1, 2])
    assert (ls.active_tokens > 200).all()
    np.testing.assert_allclose(ls.beta_error[:, 1], 1.0, atol=0.02)  # tuned: its own part
    np.testing.assert_allclose(ls.beta_reconstruction[:, 1], 1.0, atol=0.02)
    # latent 0: the base holds e0 unexplained (Complete Shrinkage)
    assert ls.nu_error[0] > 0.9 and abs(ls.nu_reconstruction[0]) < 0.05
    # latent 2: another latent rebuilds e2 in the base (Latent Decoupling)
    assert ls.nu_reconstruction[2] > 0.9 and abs(ls.nu_error[2]) < 0.05
    # latent 1: truly tuned-only
    assert abs(ls.nu_error[1]) < 0.05 and abs(ls.nu_reconstruction[1]) < 0.05
    assert list(ls.survives) == [False, True, False]

    # streaming: the same as one batch of every token, and as a direct least-squares fit
    everything = tuple(torch.cat(t) for t in zip(*batches, strict=True))
    whole = latent_scaling(cc, [everything], [0, 1, 2])
    np.testing.assert_allclose(whole.beta_error, ls.beta_error, rtol=1e-6, atol=1e-9)
    base = torch.cat([b for b, _ in batches])
    with torch.no_grad():
        f = cc.encode(cc.normalise([base, torch.cat([t for _, t in batches])]))
        y = (base - cc.decode(f)[:, 0]).double().numpy().reshape(-1)  # no base decoder
        a = (f[:, :1].double() * cc.W_dec[0, 1].double()).numpy().reshape(-1, 1)
    beta = np.linalg.lstsq(a, y, rcond=None)[0][0]
    assert ls.beta_error[0, 0] == pytest.approx(beta, rel=1e-6)


def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    d = 16
    dirs = _directions(12, d, seed=4)
    batch_at = _planted(dirs, 6, 3, batch=64, p=0.15, seed=5)
    cfg = CrosscoderConfig(expansion=2, k=2, aux_k=8, dead_tokens=64 * 5, lr=3e-3,
                           warmup_steps=5, batch_size=64, token_budget=64 * 40,
                           threshold_beta=0.9, checkpoint_every=10)
    whole = train_crosscoder(batch_at, d, 2, cfg)

    def dies_at_25(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step == 25:
            raise RuntimeError("killed")
        return batch_at(step)

    folder = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        train_crosscoder(dies_at_25, d, 2, cfg, checkpoint=folder)
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 20 and state["threshold"] is not None
    assert sorted(p.name for p in folder.iterdir()) == ["state-000000020.safetensors",
                                                        "state.json"]

    # checkpoint_every does not change the weights, so a different one resumes too
    resumed = train_crosscoder(batch_at, d, 2, dataclasses.replace(cfg, checkpoint_every=7),
                               checkpoint=folder)
    assert whole.dead > 0  # the AuxK path and its counters were exercised
    for (name, a), (_, b) in zip(whole.model.named_parameters(),
                                 resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.model.threshold == whole.model.threshold
    assert resumed.model.scales == whole.model.scales
    assert resumed.losses == whole.losses and resumed.dead == whole.dead
    assert resumed.variance_explained == whole.variance_explained

    loaded = load_crosscoder(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(),
                                                 whole.model.parameters(), strict=True))
    assert (loaded.threshold, loaded.scales) == (whole.model.threshold, whole.model.scales)

    # a checkpoint of another config is refused in one line
    other = dataclasses.replace(cfg, lr=1e-3)
    with pytest.raises(InputError, match=r"trained with lr=0\.003, this run asks lr=0\.001") \
            as exc:
        train_crosscoder(batch_at, d, 2, other, checkpoint=folder)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="d_model=16, this run asks d_model=8"):
        train_crosscoder(lambda s: (torch.zeros(64, 8),) * 2, 8, 2, cfg, checkpoint=folder)


def test_the_sae_on_differences_recovers_the_tuned_only_directions():
    d = 16
    dirs = _directions(10, d, seed=6)
    batch_at = _planted(dirs, 6, 0, batch=128, p=0.15, seed=8)  # 6 shared, 4 tuned-only
    cfg = CrosscoderConfig(expansion=2, k=1, aux_k=8, dead_tokens=128 * 30, lr=3e-3,
                           warmup_steps=20, batch_size=128, token_budget=128 * 400,
                           threshold_beta=0.95)
    result = train_diff_sae(batch_at, d, cfg)
    assert result.model.n_models == 1 and result.variance_explained[0] > 0.8
    _, cos = _best_cosines(result.model.W_dec.detach()[:, 0], dirs[6:])
    assert (cos > 0.9).sum() >= 3, cos


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k": 0}, "k must be >= 1, got 0"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"aux_coef": float("nan")}, "aux_coef must be >= 0"),
    ({"batch_size": 64, "token_budget": 10}, r"token_budget must be >= 64 \(one batch\)"),
    ({"threshold_beta": 1.0}, r"threshold_beta must be in \[0, 1\)"),
])
def test_a_bad_config_is_one_line(kwargs, message):
    with pytest.raises(InputError, match=message) as exc:
        CrosscoderConfig(**kwargs)
    assert "\n" not in str(exc.value)


def test_bad_batches_and_arguments_are_one_line():
    cfg = CrosscoderConfig(batch_size=8, token_budget=16, k=2, expansion=1)
    cases = [
        (lambda: train_crosscoder(lambda s: (torch.zeros(8, 4), torch.zeros(8, 5)), 4, 2, cfg),
         r"batch_at\(0\) must be 2 tensor\(s\) of shape \[batch, 4\]"),
        (lambda: train_crosscoder(lambda s: (torch.zeros(4, 4),) * 2, 4, 2, cfg),
         "returned 4 tokens, the config's batch_size is 8"),
        (lambda: train_crosscoder(lambda s: (torch.zeros(8, 1),) * 2, 1, 2, cfg),
         "k=2 exceeds the dictionary's 1 latents"),
        (lambda: latent_classes(Crosscoder(4, 1, 4, 1)), "two distinct streams"),
        (lambda: latent_scaling(Crosscoder(4, 2, 4, 1), [], [4]), r"must be in \[0, 4\)"),
        (lambda: latent_classes(_hand_built()).indices("chat-only"), "got 'chat-only'"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as exc:
            call()
        assert "\n" not in str(exc.value)
