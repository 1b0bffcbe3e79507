"""The shared-prefix attention (verbalize/prefix_attention.py): a long cached prefix read as one row.

Against independent references: the attention maths against a plain softmax over the concatenated
keys, and scoring with many demonstrations in the shared prefix against the model's own forward on
each whole concatenated prompt, for GPT-2 (learned positions, no pad token, one key/value head per
query head) and Llama (rotary positions, grouped-query attention), one- and multi-token words,
batch sizes 1 and many, the prefix scores cut in several chunks. Also: that the shared path is really
taken (and the prefix's keys never copied), and that models it does not fit keep the old path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from test_zoo import TEXTS, own_log_probs, tiny

from verbalize import InputError
from verbalize.engine import model_io, prefix_attention
from verbalize.engine.batching import KV_TOKENS, Encoded
from verbalize.engine.scoring import Scorer
from verbalize.prompting.template import Template

TEMPLATE = Template(
    prompt="Review: {text}\nSentiment:",
    labels={"negative": ["negative", "awful", "terrible"], "positive": ["superb", "good", "xylophone"]},
    instruction="Classify the sentiment of the review.",
    demo_format="Review: {text}\nSentiment: {label}",
)
DEMOS = [
    ("the acting is good.", "positive"),
    ("the story is bad.", "negative"),
    ("A great film with a terrible ending.", "negative"),
    ("I liked this movie, it was great and good.", "positive"),
    ("I hated it, it was bad and terrible.", "negative"),
    ("New technology makes phones faster.", "positive"),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The prefix keys of every attention computed on the shared path (split), recorded as it runs."""
    seen: list[torch.Tensor] = []
    split = prefix_attention.split

    def recording(query: torch.Tensor, kp: torch.Tensor, *args: Any) -> torch.Tensor:
        seen.append(kp)
        return split(query, kp, *args)

    monkeypatch.setattr(prefix_attention, "split", recording)
    return seen


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the allowed keys, heads repeated for groups: (b, H, L, d) -> (b, L, H, d)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1).double()
    s = (q.double() @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(1, 2)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("heads", "kv_heads", "chunk"), [(4, 4, 1 << 21), (9, 3, 1 << 21), (6, 2, 50), (4, 1, 7)])
def test_the_split_softmax_equals_one_softmax_over_the_concatenated_keys(heads, kv_heads, chunk, fused, monkeypatch):
    monkeypatch.setattr(prefix_attention, "CHUNK", chunk)
    monkeypatch.setattr(prefix_attention, "FUSED", fused)
    g = torch.Generator().manual_seed(0)
    b, length, n_prefix, d = 3, 5, 11, 8
    q = torch.randn(b, length, heads, d, generator=g).transpose(1, 2) * 3  # (b, H, L, d), strided as models give it
    kp, vp = torch.randn(1, kv_heads, n_prefix, d, generator=g) * 3, torch.randn(1, kv_heads, n_prefix, d, generator=g)
    k, v = torch.randn(b, kv_heads, length, d, generator=g) * 3, torch.randn(b, kv_heads, length, d, generator=g)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    padding = torch.arange(length)[None, :] < torch.tensor([5, 2, 4])[:, None]  # (b, L) right padding
    own = causal[None, None] & padding[:, None, None, :]  # (b, 1, L, L)
    mask = torch.cat([torch.ones(b, 1, length, n_prefix, dtype=torch.bool), own], -1)  # (b, 1, L, P + L)
    got = prefix_attention.split(q, kp, vp, k, v, own.permute(1, 0, 2, 3)[:, :, None], 0.3)
    want = naive(q, torch.cat([kp.expand(b, -1, -1, -1), k], 2), torch.cat([vp.expand(b, -1, -1, -1), v], 2), mask, 0.3)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def _scorer_and_expected(model_type: str, tokenizer: Any, **overrides: Any) -> tuple[Scorer, Any, Any, np.ndarray]:
    model = tiny(model_type, len(tokenizer), **overrides)
    tokens = TEMPLATE.labels.encode(tokenizer, TEMPLATE.label_prefix, TEMPLATE.render(TEXTS[0]))
    contexts = [list(tokenizer(TEMPLATE.render(t, DEMOS), add_special_tokens=False)["input_ids"]) for t in TEXTS]
    expected = own_log_probs(model, contexts, tokens.word_ids)  # before the scorer switches its attention
    return Scorer(model, tokenizer), model, tokens, expected


@pytest.mark.parametrize("batch_size", [1, 4, 64])
@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
@pytest.mark.parametrize("fused", [True, False])
def test_demonstrations_in_a_shared_prefix_score_as_the_models_own_forward_on_the_whole_prompt(
    model_type, batch_size, fused, gpt2_tokenizer, calls, monkeypatch
):
    monkeypatch.setattr(prefix_attention, "FUSED", fused)  # the CPU kernel, or matrix products in chunks:
    monkeypatch.setattr(prefix_attention, "CHUNK", 300)  # several chunks of prefix scores per attention
    scorer, model, tokens, expected = _scorer_and_expected(model_type, gpt2_tokenizer)
    assert scorer.io.shared and model.config._attn_implementation == "sdpa"  # switched during calls only
    assert tokens.multi_token.any() and not tokens.multi_token.all()
    prompts, spans = TEMPLATE.spans(TEXTS)
    prefix = TEMPLATE.prefix(DEMOS)
    assert len(gpt2_tokenizer(prefix)["input_ids"]) > 60
    scorer.batch_size = batch_size
    calls.clear()
    got = scorer.score_words(prompts, tokens, spans=spans, prefix=prefix)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # every attention of every pass (prompts and the later tokens of the words) read the one prefix row
    assert len(calls) >= 2 * model.config.num_hidden_layers
    assert {kp.shape[0] for kp in calls} == {1}
    assert len({kp.data_ptr() for kp in calls}) == model.config.num_hidden_layers  # never copied
    # a text's scores do not depend on its neighbours
    alone = scorer.score_words(prompts[3:4], tokens, spans=spans[3:4], prefix=prefix)
    np.testing.assert_allclose(alone[0], got[3], atol=1e-5, rtol=0)


def test_the_llama_type_default_model_takes_the_shared_path(default_scorer, calls):
    assert default_scorer.model.config.model_type == "llama"
    assert default_scorer.io.shared
    from verbalize.prompting.labels import LabelWords

    prefix = "Review: a fine film.\nSentiment: positive\n\nReview: a dull film.\nSentiment: negative\n\n"
    texts = ["Review: good fun.\nSentiment:", "Review: not for me at all, sadly.\nSentiment:"]
    words = {"negative": ["negative", "terrible movie"], "positive": ["positive"]}
    tokens = LabelWords(words).encode(default_scorer.tokenizer, " ", prefix + texts[0])
    assert tokens.multi_token.any()
    got = default_scorer.score_words(texts, tokens, prefix=prefix)
    assert calls and {kp.shape[0] for kp in calls} == {1}
    model, tok = default_scorer.model, default_scorer.tokenizer
    with torch.inference_mode():
        for i, text in enumerate(texts):
            ctx = tok(prefix + text, add_special_tokens=False)["input_ids"]
            for j, word in enumerate(tokens.word_ids):
                ids = torch.tensor([ctx + list(word[:-1])])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
                want = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(word))
                assert abs(got[i, j] - want) < 1e-3


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_scoring_leaves_the_users_model_and_random_state_as_they_were(model_type, gpt2_tokenizer, calls):
    """A model the user built: its attention implementation, its own forward and the RNG are unchanged after use."""
    from verbalize import Verbalizer

    model = tiny(model_type, len(gpt2_tokenizer))
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    implementation = model.config._attn_implementation
    torch.manual_seed(1234)
    rng, seed = torch.get_rng_state(), torch.random.initial_seed()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    clf = Verbalizer(template=TEMPLATE, model=Scorer(model, gpt2_tokenizer), n_demos=4, random_state=0)
    clf.fit([t for t, _ in DEMOS], [y for _, y in DEMOS]).predict_proba(TEXTS)
    assert calls and clf.scorer_.io.shared  # the shared prefix was read through the attention function
    assert model.config._attn_implementation == implementation != prefix_attention.NAME
    assert all(
        getattr(m, "config", model.config)._attn_implementation == implementation
        for m in model.modules()
        if hasattr(m, "config")
    )
    assert torch.equal(torch.get_rng_state(), rng) and torch.random.initial_seed() == seed
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=0, rtol=0)
    assert prefix_attention.NAME not in model.config.to_json_string()  # never saved with the model


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [("mistral", {"sliding_window": 200}), ("bloom", {}), ("llama", {"attn_implementation": "eager"})],
)
def test_models_the_shared_path_does_not_fit_keep_the_expanded_prefix(model_type, overrides, gpt2_tokenizer, calls):
    scorer, model, tokens, expected = _scorer_and_expected(model_type, gpt2_tokenizer, **overrides)
    assert not scorer.io.shared and model.config._attn_implementation != prefix_attention.NAME
    prompts, spans = TEMPLATE.spans(TEXTS)
    got = scorer.score_words(prompts, tokens, spans=spans, prefix=TEMPLATE.prefix(DEMOS))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert not calls


def test_a_model_whose_attention_bypasses_the_function_is_refused_by_the_probe(gpt2_tokenizer, monkeypatch):
    """A model that would not read the shared prefix (here: plain SDPA under the name) fails the check, keeps SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix_attention.register()
    monkeypatch.setitem(AttentionInterface._global_mapping, prefix_attention.NAME, sdpa_attention_forward)
    model = tiny("llama", len(gpt2_tokenizer))
    scorer = Scorer(model, gpt2_tokenizer)
    assert not scorer.io.shared and model.config._attn_implementation == "sdpa"


def test_off_the_plain_case_the_function_concatenates_and_stays_exact(gpt2_tokenizer):
    """With gradients on (training), the shared prefix is concatenated for SDPA: the same numbers."""
    model = tiny("qwen2", len(gpt2_tokenizer))
    Scorer(model, gpt2_tokenizer)
    prefix, rows = [3, 9, 27, 81, 50, 11, 4], torch.tensor([[7, 8, 9], [10, 11, 12]])
    whole = model(input_ids=torch.cat([torch.tensor([prefix] * 2), rows], 1)).logits[:, len(prefix) :].detach()
    with torch.no_grad():
        first = model_io._out_cache(model(input_ids=torch.tensor([prefix]), use_cache=True))
    layers = model_io.snapshot(first)
    io = model_io.ModelIO(model, "model", shared=True)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            cache = io.batch_cache(layers, 2)
            assert isinstance(cache, prefix_attention.PrefixCache)
            out = io.run(rows, cache, torch.arange(3).expand(2, 3))
        torch.testing.assert_close(out.logits.detach(), whole, atol=1e-5, rtol=0)
        assert cache.get_seq_length() == len(prefix) + 3 and cache.layers[0].keys.shape[2] == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_joined_keys_are_padded_to_the_kernels_block_with_masked_entries_and_change_nothing(dtype):
    """Keys joined on CPU under a boolean mask get masked zero keys up to a multiple of KEY_BLOCK: the
    attention's output is the unpadded one's (within the format's rounding); unmasked, the same zeros would move it."""
    gen = torch.Generator().manual_seed(0)
    b, heads, length, d, n_prefix = 3, 4, 11, 8, 2
    q = torch.randn(b, heads, length, d, generator=gen).to(dtype)
    kp, vp = (torch.randn(1, heads, n_prefix, d, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(b, heads, length, d, generator=gen).to(dtype) for _ in range(2))
    own = torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.cat([torch.ones(length, n_prefix, dtype=torch.bool), own], -1)[None, None].expand(b, 1, -1, -1)
    keys, values, padded = prefix_attention.joined(kp, vp, k, v, mask)
    n_keys = n_prefix + length
    assert keys.shape[2] % prefix_attention.KEY_BLOCK == 0 and keys.shape[2] > n_keys
    assert padded.shape[-1] == keys.shape[2] and not padded[..., n_keys:].any()
    assert torch.equal(keys[:, :, :n_keys], torch.cat([kp.expand(b, -1, -1, -1), k], 2))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    want = sdpa(
        q, torch.cat([kp.expand(b, -1, -1, -1), k], 2), torch.cat([vp.expand(b, -1, -1, -1), v], 2), attn_mask=mask
    )
    got = sdpa(q, keys, values, attn_mask=padded)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=0)
    seen = sdpa(q, keys, values, attn_mask=torch.ones_like(padded))[:, :, :1]  # the zeros unmasked
    assert float((seen.float() - want[:, :, :1].float()).abs().max()) > 10 * tol
    # no boolean mask over all keys (None: is_causal; a float mask): joined as they are
    for other in (None, mask.float()):
        keys, _, same = prefix_attention.joined(kp, vp, k, v, other)
        assert keys.shape[2] == n_keys and same is other


def test_an_expanded_prefix_counts_in_the_batch_budget():
    enc = Encoded([[1] * 10 for _ in range(40)], 0)
    shared = [len(b.rows) for b in enc.batches(64, 0, 1024, prefix_per_row=0)]
    copied = [len(b.rows) for b in enc.batches(64, 0, 1024, prefix_per_row=4000)]
    assert max(shared) > 4 and max(copied) == KV_TOKENS // 4010
    assert [len(b.rows) for b in enc.batches(64, 0, 1024, prefix_per_row=10**6)] == [1] * 40  # one row always fits


def test_a_model_switched_since_its_probe_is_probed_again(gpt2_tokenizer):
    model = tiny("llama", len(gpt2_tokenizer))
    shared = Scorer(model, gpt2_tokenizer)
    assert shared.io.shared
    model.set_attn_implementation("eager")  # as its owner may
    scorer = Scorer(model, gpt2_tokenizer)  # the remembered "shared" is not trusted blindly
    assert not scorer.io.shared and model.config._attn_implementation == "eager"
    tokens = TEMPLATE.labels.encode(gpt2_tokenizer, TEMPLATE.label_prefix, TEMPLATE.render(TEXTS[0]))
    with pytest.raises(InputError, match=r"attention implementation is 'eager', not 'sdpa'.*build a new Scorer"):
        shared.score_words(TEXTS[:2], tokens, prefix=TEMPLATE.prefix(DEMOS))
    model.set_attn_implementation("sdpa")
    assert Scorer(model, gpt2_tokenizer).io.shared and model.config._attn_implementation == "sdpa"
