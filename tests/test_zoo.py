"""Every architecture scores exactly as its own forward computes it.

A zoo of tiny random causal LMs (built from configs, no download), all reading the byte-level BPE
tokenizer of conftest.py. For each, the scorer's label-word log-probs (one- and multi-token words,
instruction and demonstrations as a shared prefix, batch sizes 1 and 64) are compared with the
log-softmax of ``model(input_ids).logits`` on each whole sequence, summed over the word's tokens,
on both logits paths: the model's own forward ("model") and the hand path ("hand").

Also here: the probe's fallbacks and refusal on models whose forward does something unknown, and
the transformers contracts that ``verbalize/model_io.py`` relies on (cache layers, per-row
``logits_to_keep``), which fail here first on an incompatible transformers upgrade.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from verbalize.engine import model_io
from verbalize.engine.models import widen_residual
from verbalize.engine.scoring import Scorer
from verbalize.errors import InputError, ModelLoadError
from verbalize.prompting.labels import LabelWords
from verbalize.prompting.template import Template

_H = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
_GPT = dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)
# model_type -> config keywords; the values that change logits after the output layer are not 1.
ZOO: dict[str, dict[str, Any]] = {
    "gpt2": _GPT,
    "llama": _H,
    "mistral": _H,
    "qwen2": _H,
    "qwen3": dict(_H, head_dim=8),
    "gemma2": dict(_H, head_dim=8, final_logit_softcapping=3.0),
    "phi3": _H,
    "cohere": dict(_H, logit_scale=0.25),
    "granite": dict(_H, logits_scaling=4.0),
    "gpt_neox": _H,
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "olmo2": _H,
    # beyond the fourteen of issue 9
    "gemma": dict(_H, head_dim=8),
    "gemma3_text": dict(_H, head_dim=8, final_logit_softcapping=3.0),
    "cohere2": dict(_H, logit_scale=0.25),
    "granitemoe": dict(_H, logits_scaling=4.0, num_local_experts=2),
    "phi": _H,
    "stablelm": _H,
    "starcoder2": _H,
    "olmo": _H,
    "mixtral": dict(_H, num_local_experts=2),
    "qwen3_moe": dict(_H, head_dim=8, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32),
    "nemotron": _H,
    "persimmon": _H,
    "exaone4": _H,
    "gptj": dict(_GPT, rotary_dim=4),
    "codegen": dict(_GPT, n_ctx=256, rotary_dim=4),
    "gpt_bigcode": _GPT,
    "xglm": dict(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64),
}
TEMPLATE = Template(
    prompt="Review: {text}\nSentiment:",
    labels={"negative": ["negative", "awful", "terrible"], "positive": ["superb", "good", "xylophone"]},
    instruction="Classify the sentiment of the review.",
    demo_format="Review: {text}\nSentiment: {label}",
)
DEMOS = [("the acting is good.", "positive"), ("the story is bad.", "negative")]
TEXTS = [
    "good.",
    "A great film with a terrible ending.",
    "bad",
    "The story is bad and the acting was terrible in every scene of the movie, I hated it.",
    "ok",
    "New technology makes phones faster, and this movie is good for business",
]
# Refused: MPT's ALiBi bias counts key positions by index, ignoring the attention mask and position ids,
# so the continuation of a right-padded prompt is off (8e-2 here); the probe catches it.
REFUSED = {"mpt": dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=256)}
DELTAS: dict[tuple[str, str], float] = {}  # (architecture, path) -> max |scorer - own forward|, for the report


@pytest.fixture(scope="module", autouse=True)
def _zoo_table() -> Iterator[None]:
    """With $VERBALIZE_ZOO_TABLE set, write the architecture -> max |delta| table there (for the docs)."""
    yield
    target = os.environ.get("VERBALIZE_ZOO_TABLE")
    if target and DELTAS:
        rows = [
            f"| {m} | {DELTAS.get((m, 'model'), float('nan')):.1e} | {DELTAS.get((m, 'hand'), float('nan')):.1e} |"
            for m in ZOO
        ]
        head = "| architecture | max abs delta, model path | max abs delta, hand path |\n|---|---:|---:|\n"
        Path(target).write_text(head + "\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(model_type: str, vocab_size: int, **overrides: Any) -> Any:
    """A random 2-layer, 32-dim model of this architecture (weights wide enough that positions matter)."""
    special = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    kw = dict(vocab_size=vocab_size, max_position_embeddings=256, initializer_range=0.2, init_std=0.2, **special)
    arch = ZOO.get(model_type) or REFUSED.get(model_type, {})
    config = AutoConfig.for_model(model_type, **{**kw, **arch, **overrides})
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def own_log_probs(model: Any, contexts: list[list[int]], word_ids: Any) -> np.ndarray:
    """log p(word | context) from the model's own forward on each whole sequence, (n_contexts, n_words)."""
    out = np.zeros((len(contexts), len(word_ids)))
    for i, ctx in enumerate(contexts):
        for j, word in enumerate(word_ids):
            ids = torch.tensor([ctx + list(word[:-1])], device=model.device)  # (1, T)
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (T, V)
            out[i, j] = sum(float(logp[len(ctx) + k - 1, t]) for k, t in enumerate(word))
    return out


@dataclass(frozen=True)
class Case:
    model: Any
    tokens: Any
    prompts: list[str]
    spans: list[tuple[int, int]]
    prefix: str
    expected: np.ndarray


@functools.cache
def case(model_type: str, tokenizer: Any) -> Case:
    model = tiny(model_type, len(tokenizer))
    tokens = TEMPLATE.labels.encode(tokenizer, TEMPLATE.label_prefix, TEMPLATE.render(TEXTS[0]))
    prompts, spans = TEMPLATE.spans(TEXTS)
    rendered = [TEMPLATE.render(t, DEMOS) for t in TEXTS]
    contexts = [list(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered]
    expected = own_log_probs(model, contexts, tokens.word_ids)
    return Case(model, tokens, prompts, spans, TEMPLATE.prefix(DEMOS), expected)


@pytest.mark.parametrize("path", ["model", "hand"])
@pytest.mark.parametrize("model_type", list(ZOO))
def test_label_word_log_probs_equal_the_models_own_forward(model_type, path, gpt2_tokenizer):
    c = case(model_type, gpt2_tokenizer)
    assert c.tokens.multi_token.any() and not c.tokens.multi_token.all()  # one- and multi-token words
    for batch_size in (1, 64):
        scorer = Scorer(c.model, gpt2_tokenizer, batch_size=batch_size, logits=path)
        assert scorer.io.path == path
        got = scorer.score_words(c.prompts, c.tokens, spans=c.spans, prefix=c.prefix)
        delta = float(np.abs(got - c.expected).max())
        DELTAS[model_type, path] = max(delta, DELTAS.get((model_type, path), 0.0))
        assert delta <= 1e-4, f"{model_type}, {path} path, batch_size={batch_size}: max |delta| {delta:.2e}"


@pytest.mark.parametrize("model_type", ["gpt2", "cohere", "granite", "gemma2"])
def test_auto_lets_the_model_compute_its_own_logits(model_type, gpt2_tokenizer):
    assert Scorer(case(model_type, gpt2_tokenizer).model, gpt2_tokenizer).io.path == "model"


def test_the_output_transforms_change_the_scores(gpt2_tokenizer):
    # Guards the zoo: without its transform each of these families scores differently.
    for model_type, key in [
        ("cohere", "logit_scale"),
        ("granite", "logits_scaling"),
        ("gemma2", "final_logit_softcapping"),
    ]:
        model = case(model_type, gpt2_tokenizer).model
        ids = torch.tensor([[3, 40, 7, 99]])  # (1, 4)
        with torch.no_grad():
            h = model.base_model(input_ids=ids).last_hidden_state  # (1, 4, d)
            bare = torch.log_softmax(model.get_output_embeddings()(h), -1)  # (1, 4, V)
            own = torch.log_softmax(model(input_ids=ids).logits, -1)  # (1, 4, V)
        assert float((bare - own).abs().max()) > 0.1, key


@pytest.mark.parametrize("model_type", list(REFUSED))
def test_an_architecture_no_path_scores_exactly_is_refused(model_type, gpt2_tokenizer):
    with pytest.raises(
        ModelLoadError, match=f"model type '{model_type}' .* cannot be scored exactly: model: log-probs"
    ):
        Scorer(tiny(model_type, len(gpt2_tokenizer)), gpt2_tokenizer)


# -- fallbacks and refusal on forwards that do something unknown -------------------------------------------


class HalvedLogits(LlamaForCausalLM):
    """A forward with an output transform no table knows, and per-row logits_to_keep."""

    def forward(self, input_ids=None, logits_to_keep=0, **kw):  # noqa: ANN001, ANN201
        out = super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw)
        out.logits = out.logits * 0.5
        return out


class HalvedOldStyle(LlamaForCausalLM):
    """The same transform, from a forward without logits_to_keep (logits at every position)."""

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, position_ids=None, **kw):  # noqa: ANN001, ANN201
        kw.pop("logits_to_keep", None)
        out = super().forward(input_ids, attention_mask, position_ids, past_key_values, **kw)
        out.logits = out.logits * 0.5
        return out


class BatchDependent(LlamaForCausalLM):
    """An unknown transform that also depends on how many rows the batch has: nothing scores it exactly."""

    def forward(self, input_ids=None, logits_to_keep=0, **kw):  # noqa: ANN001, ANN201
        out = super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw)
        out.logits = out.logits * 0.5 * input_ids.shape[0]
        return out


def odd(cls: type, tokenizer: Any) -> Any:
    config = LlamaConfig(vocab_size=len(tokenizer), initializer_range=0.2, max_position_embeddings=256, **_H)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(config).eval()


def scores_and_expected(scorer: Scorer, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    c = case("llama", tokenizer)
    got = scorer.score_words(c.prompts, c.tokens, spans=c.spans, prefix=c.prefix)
    contexts = [list(tokenizer(TEMPLATE.render(t, DEMOS), add_special_tokens=False)["input_ids"]) for t in TEXTS]
    return got, own_log_probs(scorer.model, contexts, c.tokens.word_ids)


def test_an_unknown_transform_is_exact_through_the_models_own_forward(gpt2_tokenizer):
    model = odd(HalvedLogits, gpt2_tokenizer)
    scorer = Scorer(model, gpt2_tokenizer, batch_size=4)
    assert scorer.io.path == "model"
    got, expected = scores_and_expected(scorer, gpt2_tokenizer)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    with pytest.raises(ModelLoadError, match=r"model type 'llama' \(HalvedLogits\) cannot be scored exactly: hand: "):
        Scorer(model, gpt2_tokenizer, logits="hand")


def test_without_logits_to_keep_the_probe_falls_back_to_all_positions(gpt2_tokenizer):
    scorer = Scorer(odd(HalvedOldStyle, gpt2_tokenizer), gpt2_tokenizer, batch_size=4)
    assert scorer.io.path == "full"
    got, expected = scores_and_expected(scorer, gpt2_tokenizer)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_a_model_no_path_scores_exactly_is_refused_with_its_type(gpt2_tokenizer):
    message = r"model type 'llama' \(BatchDependent\) cannot be scored exactly: model: log-probs differ .*; hand: "
    with pytest.raises(ModelLoadError, match=message):
        Scorer(odd(BatchDependent, gpt2_tokenizer), gpt2_tokenizer)


# -- the transformers contracts model_io relies on -----------------------------------------------------------


def test_per_row_logits_to_keep_gives_each_rows_own_positions(gpt2_tokenizer):
    model = case("llama", gpt2_tokenizer).model
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])  # (2, 4)
    keep = torch.tensor([[3], [1]])  # (2, 1)
    with torch.no_grad():
        full = model(input_ids=ids).logits  # (2, 4, V)
        kept = model(input_ids=ids, logits_to_keep=keep).logits  # (2, 1, V)
    assert kept.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(kept[:, 0], full[[0, 1], [3, 1]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sliding_window", [None, 4])
def test_a_cached_prefix_expanded_and_selected_continues_as_the_whole_sequence(sliding_window, gpt2_tokenizer):
    model = tiny("mistral", len(gpt2_tokenizer), sliding_window=sliding_window)
    cache = model_io.new_cache(model.config)
    assert [getattr(layer, "is_sliding", False) for layer in cache.layers] == [sliding_window is not None] * 2
    assert model_io.window(model.config) == sliding_window
    prefix, rows = [3, 9, 27, 81, 50, 11], torch.tensor([[7, 8, 9], [10, 11, 12], [13, 14, 15]])  # (3, 3)
    with torch.no_grad():
        arg = model_io._cache_arg(model)  # "cache" from transformers 5.25, "past_key_values" before
        out = model(input_ids=torch.tensor([prefix]), **{arg: cache}, use_cache=True)
        layers = model_io.snapshot(model_io._out_cache(out))
        assert all(kv.keys is not None and kv.keys.shape[0] == 1 for kv in layers)
        expanded = model_io.expand(layers, 3, model.config)
        assert expanded.get_seq_length() == len(prefix)
        got = model(input_ids=rows, **{arg: expanded}, use_cache=True).logits  # (3, 3, V)
        whole = model(input_ids=torch.cat([torch.tensor([prefix] * 3), rows], 1)).logits[:, len(prefix) :]  # (3, 3, V)
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=0)
        assert layers[0].keys.shape[2] == (len(prefix) if sliding_window is None else sliding_window - 1)
        # the prefix's cache is untouched by the batch that ran after it; rows can be picked and repeated
        picked = model_io.select(model_io.snapshot(expanded), torch.tensor([2, 2, 0]), model.config)
        nxt = torch.tensor([[1], [2], [3]])  # (3, 1)
        got = model(input_ids=nxt, **{arg: picked}, use_cache=True).logits[:, 0]  # (3, V)
        seqs = torch.cat([torch.tensor([prefix] * 3), rows[[2, 2, 0]], nxt], 1)  # (3, P + 4)
        torch.testing.assert_close(got, model(input_ids=seqs).logits[:, -1], atol=1e-5, rtol=0)


def test_a_sliding_window_model_is_exact_past_its_window_or_refuses(gpt2_tokenizer):
    model = tiny("mistral", len(gpt2_tokenizer), sliding_window=12)
    c = case("mistral", gpt2_tokenizer)
    scorer = Scorer(model, gpt2_tokenizer, batch_size=4)
    single = LabelWords({"negative": ["negative", "bad"], "positive": ["positive", "good"]}).encode(gpt2_tokenizer)
    assert not single.multi_token.any()
    got = scorer.score_words(c.prompts, single, spans=c.spans, prefix=c.prefix)  # prompts far past 12 tokens
    contexts = [list(gpt2_tokenizer(TEMPLATE.render(t, DEMOS), add_special_tokens=False)["input_ids"]) for t in TEXTS]
    np.testing.assert_allclose(got, own_log_probs(model, contexts, single.word_ids), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match=r"mistral: .* exceeds the model's sliding attention window \(12 tokens\)"):
        scorer.score_words(c.prompts, c.tokens, spans=c.spans, prefix=c.prefix)


def test_a_bfloat16_model_takes_the_models_own_path_and_stays_close(gpt2_tokenizer):
    model = tiny("granite", len(gpt2_tokenizer)).to(torch.bfloat16)
    assert model_io.tolerance(model) == 0.25  # 8 significant bits; float16 keeps 5e-2
    assert model_io.tolerance(tiny("granite", len(gpt2_tokenizer)).to(torch.float16)) == 5e-2
    scorer = Scorer(model, gpt2_tokenizer, batch_size=64)
    assert scorer.io.path == "model"
    c = case("granite", gpt2_tokenizer)
    got = scorer.score_words(c.prompts, c.tokens, spans=c.spans, prefix=c.prefix)
    assert np.abs(got - c.expected).max() < 0.2  # bfloat16 against the float32 model's own forward


# Packed rows (several prompts per row, a block-diagonal mask, positions restarting at each prompt) are
# taken where the Scorer's probe finds them exact. Models with a sliding window never pack (the mask would
# have to carry the window too); the probe refuses the others that a prompt's tokens could see past:
# BLOOM builds its ALiBi bias from a 2-D mask (a 4-D one raises), XGLM counts positions from the cache
# length, not the position ids.
NOT_PACKED = {"bloom", "xglm"}
SINGLE = Template(
    prompt="Review: {text}\nSentiment:",
    labels={"negative": ["negative", "bad"], "positive": ["good", "positive"]},
    instruction="Classify the sentiment of the review.",
    demo_format="Review: {text}\nSentiment: {label}",
)


@pytest.mark.parametrize("model_type", list(ZOO))
def test_one_token_label_words_are_exact_with_prompts_packed_into_rows(model_type, gpt2_tokenizer):
    model = case(model_type, gpt2_tokenizer).model
    tokens = SINGLE.labels.encode(gpt2_tokenizer, SINGLE.label_prefix, SINGLE.render(TEXTS[0]))
    assert all(len(ids) == 1 for ids in tokens.word_ids)
    prompts, spans = SINGLE.spans(TEXTS)
    scorer = Scorer(model, gpt2_tokenizer, batch_size=64)
    sliding = model_io.window(model.config) is not None
    assert scorer.io.packs == (not sliding and model_type not in NOT_PACKED)
    for demos in ([], DEMOS):
        contexts = [list(gpt2_tokenizer(SINGLE.render(t, demos), add_special_tokens=False)["input_ids"]) for t in TEXTS]
        got = scorer.score_words(prompts, tokens, spans=spans, prefix=SINGLE.prefix(demos))
        np.testing.assert_allclose(got, own_log_probs(model, contexts, tokens.word_ids), atol=1e-4, rtol=0)


# dtype="bfloat16" widens the residual stream to float32 (verbalize.engine.models.widen_residual). Its check
# refuses two: XGLM, whose float32 sinusoidal positions meet a narrow product (it raises), and BLOOM, whose
# stream starts at its embedding norm, narrow again (the same numbers: nothing to gain); both stay plain.
NOT_WIDENED = {"bloom", "xglm"}
# Label words' logits in float32 from a float32 final hidden state (model_io.wide_words) where the final norm
# feeds the output layer and has a weight: not OPT (its forward runs part of the body, which the scorer does
# not see) nor OLMo (weightless norms), nor the two above.
NOT_WIDE_WORDS = NOT_WIDENED | {"opt", "olmo"}


@pytest.mark.parametrize("model_type", list(ZOO))
def test_a_widened_bfloat16_model_scores_as_its_own_forward(model_type, gpt2_tokenizer):
    model = tiny(model_type, len(gpt2_tokenizer)).to(torch.bfloat16)
    assert widen_residual(model) == (model_type not in NOT_WIDENED)
    assert model_io.wide_words(model) == (model_type not in NOT_WIDE_WORDS)
    tokens = SINGLE.labels.encode(gpt2_tokenizer, SINGLE.label_prefix, SINGLE.render(TEXTS[0]))
    prompts, spans = SINGLE.spans(TEXTS)
    scorer = Scorer(model, gpt2_tokenizer, batch_size=64)
    contexts = [list(gpt2_tokenizer(SINGLE.render(t, DEMOS), add_special_tokens=False)["input_ids"]) for t in TEXTS]
    with torch.inference_mode():
        want = own_log_probs(model, contexts, tokens.word_ids)
    got = scorer.score_words(prompts, tokens, spans=spans, prefix=SINGLE.prefix(DEMOS))
    np.testing.assert_allclose(got, want, atol=0.06, rtol=0)  # bfloat16: rows of other shapes round differently
