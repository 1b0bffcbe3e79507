"""bfloat16 models with a float32 residual stream (``verbalize.engine.models.widen_residual``)."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from verbalize.engine import models
from verbalize.engine.models import widen_residual


def log_probs(model, ids):
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)


def deep_llama(layers: int = 16) -> LlamaForCausalLM:
    """Many layers whose updates are small beside large embeddings: what bfloat16 sums lose."""
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.05,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_(0, 1.0)
    return model


IDS = torch.randint(0, 97, (4, 24), generator=torch.Generator().manual_seed(1))


def test_a_widened_bfloat16_model_lies_closer_to_float32():
    wide32 = deep_llama()
    want = log_probs(wide32, IDS)
    plain = copy.deepcopy(wide32).to(torch.bfloat16)
    wide = copy.deepcopy(plain)
    assert widen_residual(wide) and wide.verbalize_wide_residual
    plain_error = float((log_probs(plain, IDS) - want).abs().mean())
    wide_error = float((log_probs(wide, IDS) - want).abs().mean())
    assert wide_error < 0.75 * plain_error  # measured 0.41x: the bfloat16 sums of 16 layers are what it keeps
    assert next(wide.parameters()).dtype == torch.bfloat16  # the weights stay narrow
    assert set(wide.state_dict()) == set(plain.state_dict())  # hooks only, no new state


def test_the_products_stay_narrow_and_the_residual_wide():
    model = copy.deepcopy(deep_llama(2)).to(torch.bfloat16)
    assert widen_residual(model)
    seen = {}
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.update(product=out.dtype))
    model.model.layers[1].register_forward_hook(lambda m, a, out: seen.update(residual=out[0].dtype))
    log_probs(model, IDS)
    assert seen == {"product": torch.bfloat16, "residual": torch.float32}


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_a_model_is_widened_once_and_float32_models_are_left_alone():
    model = copy.deepcopy(deep_llama(2)).to(torch.bfloat16)
    assert widen_residual(model)
    hooks = _hooks(model)
    assert not widen_residual(model)
    assert _hooks(model) == hooks
    float32 = deep_llama(2)
    assert not widen_residual(float32) and _hooks(float32) == 0


def test_a_model_whose_widened_forward_breaks_is_left_as_it_was():
    from transformers import XGLMConfig, XGLMForCausalLM

    config = XGLMConfig(vocab_size=97, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = XGLMForCausalLM(config).eval().to(torch.bfloat16)
    before = log_probs(model, IDS)
    assert not widen_residual(model)  # its sinusoidal positions are added in float32 to a narrow product: it raises
    assert _hooks(model) == 0 and not getattr(model, "verbalize_wide_residual", False)
    assert torch.equal(log_probs(model, IDS), before)


def test_a_widened_forward_that_moves_the_outputs_too_far_is_refused(monkeypatch):
    model = copy.deepcopy(deep_llama(2)).to(torch.bfloat16)
    monkeypatch.setattr(models, "WIDE_TOLERANCE", 0.0)
    assert not widen_residual(model)
    assert _hooks(model) == 0


def test_products_get_their_input_rounded_only_where_the_float32_stream_reaches_them():
    """Llama's products read norms (narrow outputs): no hooks on them. OLMo's norm has no weight, so the
    float32 stream reaches its products, which then round their input (the forward raised without)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    llama = copy.deepcopy(deep_llama(2)).to(torch.bfloat16)
    assert widen_residual(llama)
    linears = [m for m in llama.modules() if isinstance(m, torch.nn.Linear) and m is not llama.lm_head]
    assert linears and not any(m._forward_pre_hooks for m in linears)
    assert llama.lm_head._forward_pre_hooks  # its input, the final norm's float32 output, rounded by the layer
    config = AutoConfig.for_model(
        "olmo", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        olmo = AutoModelForCausalLM.from_config(config).eval().to(torch.bfloat16)
    assert widen_residual(olmo)
    assert all(m._forward_pre_hooks for m in olmo.modules() if isinstance(m, torch.nn.Linear))
    assert log_probs(olmo, IDS).isfinite().all()


def test_the_final_hidden_state_stays_float32_and_the_logits_do_not_move(monkeypatch):
    """The final norm's output is left in float32 and the output layer rounds it itself: same logits."""
    base = copy.deepcopy(deep_llama(4)).to(torch.bfloat16)
    stepped = copy.deepcopy(base)
    with monkeypatch.context() as m:
        m.setattr(models, "_widen_final_norm", lambda *args: False)
        assert widen_residual(stepped)  # widened, the final norm narrow like the others
    wide = copy.deepcopy(base)
    assert widen_residual(wide) and wide.verbalize_wide_hidden
    assert not getattr(stepped, "verbalize_wide_hidden", False)
    seen = []
    for model in (wide, stepped):
        model.model.register_forward_hook(lambda mod, args, out: seen.append(out.last_hidden_state.dtype))
    with torch.inference_mode():
        assert torch.equal(wide(input_ids=IDS).logits, stepped(input_ids=IDS).logits)
    assert seen == [torch.float32, torch.bfloat16]


def _loud_head(layers: int = 4):
    """A widened bfloat16 model whose logits are large (~20), where 8 bits of mantissa lose ~0.05."""
    model = copy.deepcopy(deep_llama(layers))
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


def test_label_words_get_float32_logits_from_the_float32_state():
    from verbalize.engine import model_io

    model = _loud_head().to(torch.bfloat16)
    assert widen_residual(model) and model_io.wide_words(model)
    io = model_io.ModelIO(model)
    narrow = model_io.ModelIO(model)
    narrow.wide = False
    keep = torch.tensor([[23], [10], [5], [23]])  # (4, 1) a position of each row
    first = torch.tensor([3, 17, 17, 60, 96])  # label words' first tokens, one of them twice
    with torch.inference_mode():
        out = io.run(IDS, None, keep)
        got = io.word_log_probs(out, keep, first)[:, 0].double()
        plain = narrow.word_log_probs(out, keep, first)[:, 0].double()
    h = out.hidden[torch.arange(4), keep[:, 0]].double()  # (4, d) the float32 state
    exact = h @ model.lm_head.weight[first].double().T  # (4, 5) in float64 from the same state
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731 - the normalizer cancels between labels
    assert float((centred(got) - centred(exact)).abs().max()) < 1e-4
    assert float((centred(plain) - centred(exact)).abs().max()) > 1e-2  # read off bfloat16 logits
    assert float(got.max()) <= 0  # log-probs: the words' wide logits are in the normalizer


def test_an_output_layer_with_a_transform_it_does_not_know_keeps_the_narrow_logits():
    from verbalize.engine import model_io

    class Halved(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 2
            return out

    source = _loud_head(2)
    model = Halved(source.config).eval()
    model.load_state_dict(source.state_dict())
    model = model.to(torch.bfloat16)
    assert widen_residual(model) and model.verbalize_wide_hidden
    assert not model_io.wide_words(model)
    assert not model_io.ModelIO(model).wide
    plain = _loud_head(2).to(torch.bfloat16)
    assert widen_residual(plain) and model_io.wide_words(plain)  # the same model without the transform
