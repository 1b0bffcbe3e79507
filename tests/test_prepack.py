"""bfloat16 linear layers with their weights kept reordered for oneDNN (``verbalize.engine.models.prepack``)."""

from __future__ import annotations

import copy

import pytest
import torch

from verbalize.engine.models import PrepackedLinear, prepack, prepack_available

pytestmark = pytest.mark.skipif(not prepack_available(), reason="this CPU/torch has no native oneDNN bfloat16")


@pytest.fixture
def tiny_bf16(llama_model):
    """Fresh bfloat16 copies of the suite's tiny llama (each call a new one; the shared model is left as it is)."""
    return lambda: copy.deepcopy(llama_model).to(torch.bfloat16)


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


IDS = [torch.randint(0, 97, shape, generator=torch.Generator().manual_seed(1)) for shape in [(1, 1), (1, 9), (3, 17)]]


def test_prepacked_layers_give_the_same_numbers_bit_for_bit(tiny_bf16):
    model = tiny_bf16()
    before = [logits(model, ids) for ids in IDS]
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert prepack(model) == n_linear > 0
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    for ids, want in zip(IDS, before, strict=True):
        assert torch.equal(logits(model, ids), want)
    assert set(model.state_dict()) == set(tiny_bf16().state_dict())  # the reordered copies are not state


def test_an_edited_weight_is_read_not_its_stale_reordered_copy(tiny_bf16):
    model = tiny_bf16()
    prepack(model)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, PrepackedLinear)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: same storage, a new version
    x = torch.randn(5, layer.in_features).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
    fresh = tiny_bf16()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(logits(fresh, IDS[2]), logits(model, IDS[2]))


def test_a_deep_copy_trains_and_the_prepacked_original_is_unchanged(tiny_bf16):
    model = tiny_bf16()
    prepack(model)
    want = logits(model, IDS[1])
    trained = copy.deepcopy(model).train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.5)
    out = trained(input_ids=IDS[2], labels=IDS[2])
    out.loss.backward()
    grads = [p.grad for p in trained.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)
    opt.step()
    assert not torch.equal(logits(trained.eval(), IDS[1]), want)  # the copy reads its own, trained weights
    assert torch.equal(logits(model, IDS[1]), want)


def test_float32_inputs_and_moved_weights_take_the_plain_product(tiny_bf16):
    model = tiny_bf16()
    prepack(model)
    layer = model.model.layers[1].self_attn.q_proj
    x = torch.randn(4, layer.in_features)
    assert torch.equal(layer.float()(x), torch.nn.functional.linear(x, layer.weight))  # .float() moved the weight


def test_training_the_prepacked_model_itself_takes_gradients_through_its_weights(tiny_bf16):
    model = tiny_bf16()
    prepack(model)
    model.train()
    model(input_ids=IDS[2], labels=IDS[2]).loss.backward()
    for m in model.modules():
        if isinstance(m, PrepackedLinear):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


def test_a_model_loaded_in_bfloat16_is_prepacked_and_computes_as_the_plain_load(model_dir):
    from transformers import AutoModelForCausalLM

    from verbalize.engine.models import load_model, widen_residual

    model, _ = load_model(model_dir, "cpu", "bfloat16")
    assert any(isinstance(m, PrepackedLinear) for m in model.modules())  # GPT-2's output layer (its body is Conv1D)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    assert widen_residual(plain)  # load_model widens the residual stream too (tests/test_wide_residual.py)
    ids = torch.tensor([[5, 9, 2, 7, 7, 1]])
    assert torch.equal(logits(model, ids), logits(plain, ids))
