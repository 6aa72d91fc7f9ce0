"""The one hook site: layer -> module, scoped read and add hooks, provenance paths."""

import pytest
import torch

from difflens.errors import InputError
from difflens.models.hooks import layer_module, module_path, record_layers, register_residual_hook
from difflens.models.tiny import tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model(0, n_layers=3)


def _ids(lm):
    return torch.tensor([lm.tokenizer("the fox went to the forest")["input_ids"]])


def test_layer_to_module_rule(lm):
    blocks = lm.layers.blocks(lm.model)
    assert layer_module(lm, 0) == (blocks[0], "input")
    assert layer_module(lm, 2) == (blocks[1], "output")
    assert layer_module(lm, 3) == (lm.model.get_output_embeddings(), "input")
    assert layer_module(lm, -1) == layer_module(lm, 3)
    assert [module_path(lm, i) for i in range(4)] == [
        "model.layers.0 (input)", "model.layers.0 (output)", "model.layers.1 (output)",
        "lm_head (input)"]
    with pytest.raises(InputError, match="layer 9 is out of range"):
        layer_module(lm, 9)


def _n_hooks(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def test_reading_matches_output_hidden_states_and_changes_nothing(lm):
    ids = _ids(lm)
    with torch.inference_mode():
        ref = lm.model(input_ids=ids, output_hidden_states=True)
        n_before = _n_hooks(lm)  # transformers installs its own recorders on first use
        with record_layers(lm, [0, 1, 2, 3]) as rec:
            out = lm.model(input_ids=ids)
    assert torch.equal(out.logits, ref.logits)
    for layer in range(4):
        torch.testing.assert_close(rec[layer], ref.hidden_states[layer], atol=1e-6, rtol=1e-6)
    assert _n_hooks(lm) == n_before


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_an_added_vector_reaches_the_next_layer(lm, layer):
    ids = _ids(lm)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(layer))
    with torch.inference_mode():
        with record_layers(lm, [layer]) as clean:
            lm.model(input_ids=ids)
        handle = register_residual_hook(lm, layer, lambda h: h + v)
        try:
            with record_layers(lm, [layer]) as steered:
                lm.model(input_ids=ids)
        finally:
            handle.remove()
    # the reading hook registered after the adding one sees the changed state
    torch.testing.assert_close(steered[layer] - clean[layer], v.expand_as(clean[layer]),
                               atol=1e-5, rtol=1e-5)
