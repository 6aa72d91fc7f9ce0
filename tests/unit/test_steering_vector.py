"""SteeringVector: scoped application, arithmetic, provenance, and the probe's direction."""

import pytest
import torch

from difflens.control.state_probe import StateProbe
from difflens.control.steering import SteeringVector
from difflens.errors import InputError
from difflens.models.hooks import record_layers
from difflens.models.tiny import tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model(1, n_layers=3)


def _vec(lm, seed):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed))


def _states(lm, layer):
    ids = torch.tensor([lm.tokenizer("the fox went to")["input_ids"]])
    with torch.inference_mode(), record_layers(lm, [layer]) as rec:
        logits = lm.model(input_ids=ids).logits
    return rec[layer], logits


def test_apply_is_scoped_and_adds_alpha_times_the_vector(lm):
    v = SteeringVector({2: _vec(lm, 0)}, {"method": "planted"})
    before, logits = _states(lm, 2)
    with v.apply(lm, alpha=3.0):
        during, steered_logits = _states(lm, 2)
    after, logits_after = _states(lm, 2)
    torch.testing.assert_close(during - before, (3.0 * v[2]).expand_as(before),
                               atol=1e-5, rtol=1e-5)
    assert not torch.equal(steered_logits, logits)
    assert torch.equal(logits_after, logits) and torch.equal(after, before)


def test_arithmetic_and_errors(lm):
    a = SteeringVector({1: _vec(lm, 1), 2: _vec(lm, 2)}, {"method": "a"})
    b = SteeringVector({1: _vec(lm, 3), 2: _vec(lm, 4)}, {"method": "b"})
    torch.testing.assert_close((a + b)[1], a[1] + b[1])
    torch.testing.assert_close((a - b)[2], a[2] - b[2])
    torch.testing.assert_close((2 * a)[1], a[1] * 2)
    torch.testing.assert_close((a / 4)[2], a[2] / 4)
    torch.testing.assert_close((-a)[1], -a[1])
    assert float((a.unit())[2].norm()) == pytest.approx(1.0)
    zero = a - a
    before, logits = _states(lm, 2)
    with zero.apply(lm, alpha=5.0):
        _, same = _states(lm, 2)
    torch.testing.assert_close(same, logits)
    with pytest.raises(InputError, match="cannot combine steering vectors of layers"):
        a + SteeringVector({1: _vec(lm, 5)})
    with pytest.raises(InputError, match="has no layer 0"):
        a[0]
    with pytest.raises(InputError, match="one 1-D vector per layer"):
        SteeringVector({1: torch.zeros(3), 2: torch.zeros(4)})


def test_the_probe_direction_is_a_unit_steering_vector_at_its_layer():
    w = torch.tensor([3.0, 4.0] + [0.0] * 30)
    probe = StateProbe(weight=w, bias=0.0, layer=2, threshold=0.5, state_norm=1.0,
                       model={"name": "x"})
    d = probe.direction
    assert isinstance(d, SteeringVector) and d.layers == (2,)
    torch.testing.assert_close(d[2][:2], torch.tensor([0.6, 0.8]))
    assert d.provenance["method"] == "state_probe"


def test_the_old_generate_name_still_works_and_warns(lm):
    from difflens.control import generate, greedy_texts

    with pytest.warns(DeprecationWarning, match="use greedy_texts"):
        old = generate(lm, ["the fox went to"], max_new_tokens=5)
    assert old == greedy_texts(lm, ["the fox went to"], max_new_tokens=5)


def test_a_steering_vector_is_a_monitor_direction(lm):
    from difflens.control.monitor import generate_monitored
    from difflens.sampling.generate import GenerationConfig

    probe = StateProbe(weight=_vec(lm, 7), bias=0.0, layer=2, threshold=0.5, state_norm=1.0,
                       model={"name": "x", "d_model": lm.d_model, "n_layers": lm.n_layers,
                              "tokenizer_sha256": lm.identity.tokenizer_sha256,
                              "weights_sha256": lm.identity.weights_sha256})
    from difflens.control.monitor import Controller

    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    ctrl = Controller("open_loop", 1.0)
    v = _vec(lm, 8)
    a = generate_monitored(lm, probe, ["the fox went to"], controller=ctrl, config=cfg,
                           direction=v)
    b = generate_monitored(lm, probe, ["the fox went to"], controller=ctrl, config=cfg,
                           direction=SteeringVector({2: v}))
    assert a.traces[0].token_ids == b.traces[0].token_ids
    assert a.traces[0].scores == b.traces[0].scores
