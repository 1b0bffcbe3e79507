"""dtype="int8": scores close to float32, same decisions, batch invariance kept, save/load keep the choice."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from verbalize import LabelWords, Verbalizer
from verbalize.engine.models import OUTLIER_RMS, Int8Linear, float_activations, is_quantized, quantize
from verbalize.engine.scoring import Scorer
from verbalize.errors import ModelLoadError

TEXTS = [
    "the acting is good",
    "the story is bad and the ending is terrible",
    "a great film",
    "I hated it",
    "New technology makes phones faster and the market fell today",
    "ok",
    "the team won the game",
]
WORDS = LabelWords({"negative": ["negative", "bad"], "positive": ["positive", "good"]})


def prompts_of(texts: list[str]) -> list[str]:
    return [f"Review: {t}\nSentiment:" for t in texts]


@pytest.fixture(scope="module")
def int8_llama(llama_model: Any) -> Any:
    return quantize(copy.deepcopy(llama_model))


@pytest.fixture
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quantize_replaces_body_linears_only(int8_llama: Any, llama_model: Any) -> None:
    assert is_quantized(int8_llama) and not is_quantized(llama_model)
    out = int8_llama.get_output_embeddings()
    assert type(out) is torch.nn.Linear and out.weight.dtype == torch.float32  # output layer stays float32
    assert torch.equal(out.weight, llama_model.get_output_embeddings().weight)  # untouched
    body = [m for m in int8_llama.modules() if isinstance(m, torch.nn.Linear) and m is not out]
    assert body == []  # every body linear became an int8 layer
    assert isinstance(int8_llama.model.layers[0].self_attn.q_proj, Int8Linear)


def test_int8_layer_is_the_exact_integer_product() -> None:
    """oneDNN's product equals the integer product of the quantized operands, computed here in float64.

    On CPUs without AVX-512 VNNI a u8 x s8 pair sum saturates at int16 unless weights keep 7 bits;
    inputs with large values in every channel would expose a wrong weight range."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    layer = Int8Linear(lin)
    x = torch.rand(5, 96) * 6 - 1  # mostly positive, so large activations meet large weights; no entry is
    assert float((x.abs() / x.norm(dim=1, keepdim=True)).max()) * 96**0.5 < OUTLIER_RMS  # an outlier
    qx_scale = x.abs().amax(1, keepdim=True) / 127
    qx = torch.round(x / qx_scale)
    planes = (qx.double() @ layer.qweight.double().T) * layer.w_scale.double()  # (5, 2 x 40): the two planes
    want = (planes[:, :40] + planes[:, 40:]) * qx_scale.double() + lin.bias.double()
    with torch.inference_mode():
        got = layer(x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert float((got - lin(x)).norm() / lin(x).norm()) < 0.05  # and close to float32


def test_probe_sees_float_activations(int8_llama: Any) -> None:
    layer = int8_llama.model.layers[0].mlp.up_proj
    x = torch.randn(3, layer.in_features)
    with torch.inference_mode(), float_activations():
        got = layer(x)
    torch.testing.assert_close(got, x @ layer.dequantized().T)
    with torch.inference_mode():
        assert not torch.equal(layer(x), got)  # outside the block, activations are rounded again


def test_int8_scores_close_to_float32(llama: Any, int8_llama: Any, one_thread: Any) -> None:
    tokens = WORDS.encode(llama.tokenizer, " ")
    prompts = prompts_of(TEXTS)
    ref = Scorer(llama.model, llama.tokenizer).score_words(prompts, tokens)
    got = Scorer(int8_llama, llama.tokenizer).score_words(prompts, tokens)
    # Random weights drawn wide (initializer_range 0.2) are a hard case for int8; real models are closer.
    assert np.abs(got - ref).max() < 0.5
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
    agree = (got[:, 0] > got[:, 2]) == (ref[:, 0] > ref[:, 2])
    assert agree.mean() >= 6 / 7


def test_int8_is_batch_invariant(llama: Any, int8_llama: Any, one_thread: Any) -> None:
    """A text's int8 scores do not depend on its batch neighbours beyond float32 rounding.

    Each quantized layer is exactly row-independent (next test). End to end, the float32 parts of
    the model round differently for different batch shapes (~1e-6, as in float32); such a difference
    can move an activation across an int8 rounding step, which this tiny random model (weights drawn
    wide) then amplifies. With one scale per tensor (torch.ao's quantize_dynamic) every score would
    move with its neighbours instead: on this model ~25x more (median 0.1 against 0.004).
    """
    tokens = WORDS.encode(llama.tokenizer, " ")
    prompts = prompts_of(TEXTS)
    alone = np.concatenate([Scorer(int8_llama, llama.tokenizer).score_words([p], tokens) for p in prompts])
    ref = Scorer(llama.model, llama.tokenizer).score_words(prompts, tokens)
    for batch_size in (2, 3, 64):
        got = Scorer(int8_llama, llama.tokenizer, batch_size=batch_size).score_words(prompts, tokens)
        moved = np.abs(got - alone)
        assert np.median(moved) < 0.02 and moved.max() < 0.5 * np.abs(alone - ref).max()
        np.testing.assert_array_equal(got.argmax(1), alone.argmax(1))


def test_activation_scales_are_per_token(int8_llama: Any) -> None:
    """Scaling one row of a quantized layer's input must not change the other rows' outputs."""
    layer = int8_llama.model.layers[0].mlp.up_proj
    x = torch.randn(4, layer.in_features)
    y = x.clone()
    y[1] *= 100
    with torch.inference_mode():
        torch.testing.assert_close(layer(x)[[0, 2, 3]], layer(y)[[0, 2, 3]], atol=1e-6, rtol=0)


def outlier_layer() -> tuple[torch.nn.Linear, Int8Linear]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 48)
    return lin, Int8Linear(lin)


def test_an_outlier_entry_leaves_the_rest_of_its_row_precise() -> None:
    """SmolLM2's first token carries 2.5e4 in a few channels: with one int8 step of 1/127 of that, the
    row's other entries (~1) would all round to zero. Outliers go through a float product instead, and
    the rest of the row keeps int8 steps of its own size."""
    lin, layer = outlier_layer()
    x = torch.randn(4, 256)
    x[1, 7] = 2.5e4
    x[2, 100], x[2, 3] = -60.0, 45.0
    rest = x.clone()
    rest[1, 7], rest[2, 100], rest[2, 3] = 0.0, 0.0, 0.0
    with torch.inference_mode():
        got = layer(x)
        with float_activations():  # the same int8 weights, float activations
            want, normal = layer(x), layer(rest) - lin.bias
    for row in (1, 2):  # the error against the size of what the row's ordinary entries contribute
        assert float((got[row] - want[row]).norm() / normal[row].norm()) < 0.02
    assert float((got - want).norm() / want.norm()) < 0.01


def test_outliers_are_chosen_per_row_and_batch_invariant() -> None:
    """Whether an entry is an outlier depends on its row alone: a row's output is the same alone and in
    any batch, and an outlier in one row leaves the others' outputs unchanged, bit for bit."""
    _, layer = outlier_layer()
    x = torch.randn(6, 256)
    x[0, 3], x[0, 200] = 2.5e4, -900.0
    x[2, 3] = 40.0
    x[4, [17, 18, 90]] = torch.tensor([15.0, -20.0, 30.0])
    with torch.inference_mode():
        whole = layer(x)
        for i in range(len(x)):
            assert torch.equal(layer(x[i : i + 1]), whole[i : i + 1]), i
        assert torch.equal(layer(x[[4, 0]]), whole[[4, 0]])
        y = x.clone()
        y[3, 50] = 1e4
        others = [0, 1, 2, 4, 5]
        assert torch.equal(layer(y)[others], whole[others])


@pytest.fixture(scope="module")
def outlier_llama(llama_model: Any) -> Any:
    """The tiny Llama with an outlier feature channel (LLM.int8, Dettmers et al. 2022): every RMSNorm scales
    channel 5 by 60, so that channel dominates every normalized row, as a few channels do in SmolLM2."""
    model = copy.deepcopy(llama_model)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "LlamaRMSNorm":
                m.weight[5] *= 60
    return model


def test_int8_layers_stay_precise_beside_an_outlier_channel(outlier_llama: Any, llama: Any) -> None:
    """Each int8 layer against the same int8 weights with float activations, on the rows the model meets:
    the layers that read normalized rows (q, k, v, gate, up) err no more than ordinary int8 (~1%)."""
    model = quantize(copy.deepcopy(outlier_llama))
    inputs: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear):
            m.register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, []).append(args[0]))
    with torch.inference_mode():
        model(**llama.tokenizer(prompts_of(TEXTS), return_tensors="pt", padding=True))
        for name, xs in inputs.items():
            layer = model.get_submodule(name)
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
            x = x[x.abs().amax(1) > 0]  # padding rows of the first layer are zeros
            with float_activations():
                want = layer(x)
            error = ((layer(x) - want).norm(dim=1) / want.norm(dim=1)).median()
            if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
                assert float(error) < 0.008, name


def test_int8_follows_float32_on_a_model_with_an_outlier_channel(
    outlier_llama: Any, llama: Any, one_thread: Any
) -> None:
    tokens = WORDS.encode(llama.tokenizer, " ")
    prompts = prompts_of(TEXTS)
    int8 = quantize(copy.deepcopy(outlier_llama))
    ref = Scorer(outlier_llama, llama.tokenizer).score_words(prompts, tokens)
    got = Scorer(int8, llama.tokenizer).score_words(prompts, tokens)
    alone = np.concatenate([Scorer(int8, llama.tokenizer).score_words([p], tokens) for p in prompts])

    def log_odds(s: np.ndarray) -> np.ndarray:
        return np.logaddexp(s[:, 2], s[:, 3]) - np.logaddexp(s[:, 0], s[:, 1])

    # The weights' int8 step bounds what is left: CPUs without AVX-512 VNNI keep 7 bits (a range of 63, not
    # 127: see models._weight_range), which doubles it. One scale per row for the whole row moved log-odds
    # by up to 4 here (their spread is 10), above either bound.
    top = max(int(m.qweight.abs().max()) for m in int8.modules() if isinstance(m, Int8Linear))
    step = 127 / top  # 1 with 8-bit weights, ~2 with 7-bit ones
    assert np.abs(log_odds(got) - log_odds(ref)).max() < 0.75 * step
    assert np.abs(got - ref).max() < 1.0 * step
    np.testing.assert_array_equal(got.argmax(1), alone.argmax(1))
    assert np.abs(got - alone).max() < 0.5 * np.abs(got - ref).max()


def test_model_without_linear_layers_is_refused(gpt2_model: Any) -> None:
    with pytest.raises(ModelLoadError, match="Conv1D"):
        quantize(copy.deepcopy(gpt2_model))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, llama_model: Any, llama_tokenizer: Any) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    llama_model.save_pretrained(path)
    llama_tokenizer.save_pretrained(path)
    return path


def test_verbalizer_int8_save_load(llama_dir: Path, tmp_path: Path, one_thread: Any) -> None:
    clf = Verbalizer(template="Review: {text}\nSentiment:", labels=dict(WORDS), model=str(llama_dir), dtype="int8")
    proba = clf.fit().predict_proba(TEXTS)
    assert is_quantized(clf.scorer_.model)
    clf.save(tmp_path / "clf")
    back = Verbalizer.load(tmp_path / "clf")
    assert back.dtype == "int8" and is_quantized(back.scorer_.model)
    np.testing.assert_allclose(back.predict_proba(TEXTS), proba, atol=1e-6)
    f32 = Verbalizer.load(tmp_path / "clf", dtype="float32")
    assert not is_quantized(f32.scorer_.model)


def test_fine_tuning_an_int8_classifier_is_refused_with_the_way_to_do_it(int8_llama: Any, llama: Any) -> None:
    from verbalize import FineTuneConfig

    clf = Verbalizer(
        template="Review: {text}\nSentiment:",
        labels=dict(WORDS),
        model=Scorer(int8_llama, llama.tokenizer),
        fine_tuning=FineTuneConfig(epochs=1),
    )
    with pytest.raises(ValueError, match=r"float32.*dtype='int8'"):
        clf.fit(TEXTS[:4], ["positive", "negative", "positive", "negative"])


def test_two_weight_planes_hold_the_weights_to_a_second_rounding() -> None:
    """The second int8 plane rounds the first one's error: each weight is then off by at most a quarter of
    the first plane's step over the weight range (127, or 63 without AVX-512 VNNI), where one plane is
    off by up to half a step."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 32)
    layer = Int8Linear(lin)
    w = lin.weight.detach()
    top = int(layer.qweight.abs().max())
    row_max = w.abs().amax(1, keepdim=True)
    one_plane = (layer.qweight[:32].float() * layer.w_scale[:32, None] - w).abs()
    two_planes = (layer.dequantized() - w).abs()
    assert bool((two_planes <= row_max / (4 * top * top) * 1.001 + 1e-9).all())
    assert float(one_plane.max()) > 20 * float(two_planes.max())  # the first plane alone is far coarser
    x = torch.rand(6, 128) * 2 - 1  # no outliers; the product: int8 activations times two planes
    with torch.inference_mode():
        got, want = layer(x), lin(x)
    assert float((got - want).norm() / want.norm()) < 0.01


def test_layers_that_read_one_tensor_round_it_once_with_the_same_result(int8_llama: Any) -> None:
    """q, k and v read one normalized tensor: the second and third reuse its rounding. Each output is the
    same bit for bit as when every layer rounds its own input, and a tensor that is changed in place
    (its version counter moves) or another tensor of the same shape is rounded again."""
    attn = int8_llama.model.layers[0].self_attn
    layers = (attn.q_proj, attn.k_proj, attn.v_proj)
    assert all(m.share_input for m in layers)  # quantize's check passed on this model
    torch.manual_seed(1)
    x = torch.randn(2, 5, attn.q_proj.in_features)
    x[0, 0, 3] = 400.0  # an outlier entry, so the shared rounding carries outliers too
    other = torch.randn_like(x)

    def run(share: bool, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for m, t in zip(layers * 2, inputs, strict=True):
                m.share_input = share
                out.append(m(t))
        for m in layers:
            m.share_input = True
        return out

    inputs = [x, x, x, other, x, other]
    for got, want in zip(run(True, inputs), run(False, inputs), strict=True):
        assert torch.equal(got, want)
    with torch.no_grad():
        before = attn.q_proj(x)
        x.mul_(3)  # in place: the version counter moves, so k_proj must not reuse q_proj's rounding
        attn.k_proj.share_input = False
        want = attn.k_proj(x)
        attn.k_proj.share_input = True
        assert torch.equal(attn.k_proj(x), want)
        assert not torch.equal(attn.q_proj(x), before)


class _WritesInPlace(torch.nn.Module):
    """Two linear layers read one tensor, and the code writes into it between them (inference tensors have
    no version counter, so only quantize's check can see this)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"vocab_size": 50})()
        self.embed = torch.nn.Embedding(50, 16)
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 50)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor) -> Any:
        h = self.embed(input_ids) * 1.0
        first = self.a(h)
        h.mul_(-2.0)
        return type("Out", (), {"logits": self.head(first + self.b(h))})()


def test_quantize_keeps_layers_apart_where_sharing_would_change_the_output() -> None:
    torch.manual_seed(0)
    model = quantize(_WritesInPlace())
    assert isinstance(model.a, Int8Linear) and not model.a.share_input and not model.b.share_input
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        got = model(ids).logits
        model.a.share_input = model.b.share_input = True  # sharing here reuses the stale rounding of h
        stale = model(ids).logits
    assert not torch.equal(got, stale)


def test_int8_tensors_saved_with_one_plane_load_as_those_weights(int8_llama: Any, llama_model: Any) -> None:
    """A pickle made before the second plane holds one plane per layer: it loads with a zero second plane,
    so the layers compute what they computed then."""
    from verbalize.engine.models import int8_tensors, load_int8_tensors

    tensors = int8_tensors(int8_llama)
    old = {}
    for key, t in tensors.items():
        n = int8_llama.get_submodule(key.rsplit(".", 1)[0]).out_features
        old[key] = t[:n].contiguous() if key.endswith((".qweight", ".w_scale")) else t
    model = quantize(copy.deepcopy(llama_model))
    load_int8_tensors(model, old)
    layer, ref = model.model.layers[0].mlp.up_proj, int8_llama.model.layers[0].mlp.up_proj
    n = ref.out_features
    torch.testing.assert_close(layer.dequantized(), ref.qweight[:n].float() * ref.w_scale[:n, None], rtol=0, atol=0)
    x = torch.rand(3, layer.in_features)
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (3, n) and bool(torch.isfinite(y).all())
