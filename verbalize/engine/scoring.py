"""Scorer: label-word log-probabilities from one forward pass of a causal LM per batch.

The transformer body runs once over each length-sorted, right-padded batch. Only the hidden
state at each prompt's last real token goes through the output layer, so the full-vocabulary
logits are never built at every position. Right padding needs no attention mask: causal
attention never lets a real token see the padding after it, and positions of real tokens are
0..n-1 as if alone (this is what makes GPT-2, which has no pad token and learned absolute
positions, correct under padding). Words of several tokens are scored exactly with a second,
short pass that reuses the prompt's key/value cache. A prefix shared by all prompts (BOS,
instruction, demonstrations, the template's words before the text) is run once and its key/value
cache reused by every batch. Identical prompts in one call are run once.

With one token per label word and no features asked for, prompts are packed instead: several to a
row, end to end, each attending to the shared prefix and its own earlier tokens only (a block-diagonal
causal mask) at positions counted from its own start (:func:`~verbalize.engine.batching.pack`). A call
of 32 short texts then takes one forward with ~1% padding instead of three or four padded ones. A
probe at construction proves it exact for the model (or keeps padded rows): recurrent state, a
position bias that ignores the mask (BLOOM's ALiBi) or positions that ignore the ids (XGLM) fail it.

How the logits are computed and the key/value cache handled is :mod:`verbalize.engine.model_io`'s
business; by default the model's own forward computes its logits (at the last positions only), and
a probe at construction proves the chosen path equal to ``model(input_ids).logits`` or refuses.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from verbalize.engine import model_io, prefix_attention
from verbalize.engine.batching import (
    Batch,
    Encoded,
    Packed,
    Spans,
    cut_fields,
    encode_prompts,
    pack,
    pad_batch,
    pad_id_of,
    shift_spans,
    span_lists,
)
from verbalize.engine.cache import MODELS
from verbalize.engine.formats import DtypeChoice, choice_of
from verbalize.engine.model_io import ModelIO
from verbalize.engine.models import float_activations, is_quantized
from verbalize.engine.prefixes import PrefixMemo
from verbalize.engine.tokens import LabelTokens, char_bound, leading_special_ids, prompt_budget, reserved_tokens
from verbalize.engine.tokens import token_ids as _ids
from verbalize.errors import InputError, check_choice

logger = logging.getLogger(__name__)

AGGREGATIONS = ("logsumexp", "mean", "max")
POOLINGS = ("last", "mean")
LONG_ROW = 1024
"""Tokens beyond which a prompt is scored on its own, sharing no prefix (see ``_run``)."""
# model -> its exact logits path, whether its cached prefix is shared (see model_io.share_prefix), and
# the attention implementation the model had when probed (its owner may change it since)
_PATH_OF: weakref.WeakKeyDictionary[Any, tuple[str, bool, bool, Any]] = weakref.WeakKeyDictionary()
_MEMOS: weakref.WeakKeyDictionary[Any, PrefixMemo] = weakref.WeakKeyDictionary()  # model -> its shared prefixes


class Scorer:
    """Scores prompts with a causal LM.

    Parameters
    ----------
    model : transformers causal LM (``PreTrainedModel`` with an output embedding)
    tokenizer : its tokenizer (fast tokenizers allow truncation of long texts)
    batch_size : int, default 64
        Prompts per forward pass.
    max_length : int, optional
        Token budget per sequence; defaults to the model's context window.
    max_tokens : int, optional, default 1024
        Token budget per batch (rows x padded length; packed rows count the same way). With
        length-sorted batches this keeps every matrix product near the CPU's most efficient size:
        short prompts get more rows per batch.
        The pass over the later tokens of multi-token words is cut into chunks under the same budget.
    logits : {"auto", "model", "hand", "full"}, default "auto"
        How logits are computed (see :mod:`verbalize.engine.model_io`). ``"auto"`` takes the first of
        "model", "hand", "full" that a probe proves equal to the model's own forward; a named path
        is probed too. No path that passes means a :class:`ModelLoadError` naming the model type.

    Notes
    -----
    Thread safety: one Scorer (and one model, shared with other Scorers) may be called from several
    threads at once and gives each call what a serial call gives. A call keeps its state to itself
    (key/value caches, the shared prefix its attention reads, the hidden states it captures); the
    model's attention is switched to the shared-prefix function while calls that need it run, and
    restored to the model's own when the last of them ends. ``last_n_truncated`` is the count of the
    last call in any thread. Fine-tuning trains a copy of the model, never the shared one.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 64,
        max_length: int | None = None,
        max_tokens: int | None = 1024,
        logits: str = "auto",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_tokens = max_tokens
        self.context_length = self._context_length(max_length)
        self.pad_id = pad_id_of(tokenizer)
        self._lead = leading_special_ids(tokenizer)
        self.last_n_truncated = 0
        self.io = self._choose(logits)

    @classmethod
    def from_pretrained(
        cls, name: str | os.PathLike[str] | None = None, device: str = "auto", dtype: str = "auto", **kwargs: Any
    ) -> Scorer:
        """Load (once per process, per name/device/dtype: :data:`verbalize.engine.cache.MODELS`) and wrap
        a model; see :func:`load_model`. ``verbalize.clear_model_cache()`` forgets the loaded models.

        ``dtype="auto"`` takes the format measured fastest on this machine among those whose scores
        pass this class's exactness probe (see :mod:`verbalize.engine.formats` and :attr:`dtype_choice`)."""
        return cls(*MODELS.get(name, device, dtype, exact=_exact), **kwargs)

    @property
    def dtype(self) -> str:
        """The number format the model runs in: "float32", "bfloat16", "float16" or "int8"."""
        return "int8" if is_quantized(self.model) else str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def dtype_choice(self) -> DtypeChoice | None:
        """What ``dtype="auto"`` chose for this model and the rates it measured (None when a format was named)."""
        return choice_of(self.model)

    @classmethod
    def resolve(cls, model: Any = None, device: str = "auto", dtype: str = "auto", **settings: Any) -> Scorer:
        """``model`` as a Scorer with ``settings`` (see :meth:`with_settings`): a Scorer is re-wrapped
        (sharing its weights), a name, directory or file loaded once per process (:meth:`from_pretrained`)."""
        base = model if isinstance(model, Scorer) else cls.from_pretrained(model, device, dtype)
        return base.with_settings(**settings)

    def with_settings(
        self,
        *,
        batch_size: int | None = None,
        max_length: int | None | EllipsisType = ...,
        max_tokens: int | None | EllipsisType = ...,
        model: Any = None,
    ) -> Scorer:
        """A Scorer over the same model and tokenizer with other batch settings: the one way to change them.

        Parameters
        ----------
        batch_size : int, optional
            Prompts per forward pass (default: this scorer's).
        max_length : int or None, optional
            Token budget per prompt; None is the model's context window (default: this scorer's budget).
        max_tokens : int or None, optional
            Token budget per batch (default: this scorer's).
        model : causal LM, optional
            Another model of the same tokenizer (a fine-tuned copy): it is probed as a new Scorer's model is.

        Examples
        --------
        >>> small = scorer.with_settings(batch_size=8)  # doctest: +SKIP
        >>> small.model is scorer.model  # doctest: +SKIP
        True
        """
        batch = self.batch_size if batch_size is None else batch_size
        length = self.context_length if max_length is ... else max_length
        tokens = self.max_tokens if max_tokens is ... else max_tokens
        if model is not None:
            return Scorer(model, self.tokenizer, batch, length, tokens)
        # Shares the model, tokenizer and the probed logits path (self.io). Not copy.copy: persistence
        # registers a copyreg reducer for pickling that rebuilds the model (new weights, the caller's RNG).
        out = object.__new__(Scorer)
        out.__dict__.update(self.__dict__)
        out.batch_size, out.max_tokens, out.last_n_truncated = int(batch), tokens, 0
        out.context_length = out._context_length(length)
        return out

    def _context_length(self, max_length: int | None) -> int:
        """Tokens per sequence: the model's window, or ``max_length`` when it is smaller."""
        config = self.model.config
        window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return min(x for x in (window, max_length, 10**9) if x)

    def __deepcopy__(self, memo: dict) -> Scorer:
        # sklearn's clone deep-copies parameters; a Scorer holds no learned state, so share its weights.
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- public scoring ------------------------------------------------------------------------
    def score_words(
        self,
        prompts: Sequence[str],
        label_tokens: LabelTokens,
        spans: Spans | None = None,
        prefix: str = "",
        progress: bool = False,
    ) -> np.ndarray:
        """Log-probability of each label word after each prompt, shape (n_prompts, n_words).

        The sequence scored is ``prefix + prompt + label_word``; ``spans`` say where the text lies in
        each prompt, so that an over-long prompt loses tokens of its text only.
        """
        words, _ = self.outputs(prompts, label_tokens, (), spans, prefix, progress)
        assert words is not None
        return words

    def next_token_log_probs(
        self, prompts: Sequence[str], spans: Spans | None = None, prefix: str = "", progress: bool = False
    ) -> np.ndarray:
        """The log-distribution over the whole vocabulary after each prompt, shape (n_prompts, V), float32.

        Every token of the output layer is scored as a one-token word, so this reads exactly what
        :meth:`score_words` reads (the probe-verified logits path), whatever the model's output transform.
        """
        n = int(self.model.config.get_text_config(decoder=True).vocab_size)
        names = tuple(str(i) for i in range(n))
        vocab = LabelTokens(names, names, np.arange(n), tuple((i,) for i in range(n)))
        return self.score_words(prompts, vocab, spans, prefix, progress)

    def features(
        self,
        prompts: Sequence[str],
        spans: Spans | None = None,
        prefix: str = "",
        progress: bool = False,
        pooling: str = "last",
        layers: int = 1,
    ) -> np.ndarray:
        """Pooled hidden states, shape (n_prompts, hidden * layers); see :meth:`outputs`."""
        return self.outputs(prompts, None, [(pooling, layers)], spans, prefix, progress)[1][0]

    def outputs(
        self,
        prompts: Sequence[str],
        label_tokens: LabelTokens | None,
        pools: Sequence[tuple[str, int]] = (),
        spans: Spans | None = None,
        prefix: str = "",
        progress: bool = False,
    ) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """Label-word log-probs and pooled features from the same forward pass.

        ``pools`` are (pooling, layers) pairs: pooling ``"last"`` takes each prompt's last token,
        ``"mean"`` the mean over its tokens (the prefix included, leading special tokens such as BOS
        not); ``layers`` > 1 concatenates the last that many layers (the last one after the final norm).
        Returns (word scores of shape (n, n_words) or None, one (n, hidden * layers) array per pool).
        """
        widths = ([len(label_tokens.word_ids)] if label_tokens is not None else []) + [
            self.model.config.hidden_size * layers for _, layers in pools
        ]
        room = reserved_tokens(label_tokens)
        want_states = any(how == "mean" for how, _ in pools)

        def step(batch: Batch, cache: Any, n_prefix: int, prefix_states: Any) -> list[torch.Tensor]:
            words, feats = self.forward(batch, cache, n_prefix, label_tokens, pools, prefix_states)
            return ([words] if words is not None else []) + feats

        # One token per label word and no features: prompts may share rows (see batching.pack)
        single = label_tokens is not None and all(len(ids) == 1 for ids in label_tokens.word_ids)
        first = [ids[0] for ids in label_tokens.word_ids] if single and not pools and self.io.packs else None  # type: ignore[union-attr]
        out = self._run(prompts, spans, prefix, step, room, widths, progress, want_states, first)
        return (out[0] if label_tokens is not None else None), out[1 if label_tokens is not None else 0 :]

    def forward(
        self,
        batch: Batch,
        cache: Any,
        n_prefix: int,
        label_tokens: LabelTokens | None,
        pools: Sequence[tuple[str, int]] = (),
        prefix_states: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """One differentiable pass over a right-padded batch: (word log-probs (b, n_words) or None, features).

        ``cache`` holds ``n_prefix`` shared tokens already run (or is None); ``prefix_states`` are the
        per-layer sums of the prefix's hidden states (for mean pooling). Used by scoring and training.
        """
        multi = [j for j, ids in enumerate(label_tokens.word_ids) if len(ids) > 1] if label_tokens else []
        deep = max((layers for _, layers in pools), default=1) > 1
        dev = batch.input_ids.device
        keep = batch.last_index.to(dev)[:, None] if label_tokens is not None else None  # (b, 1)
        again = model_io.reusable(cache, self.model.config) if cache is not None and pools else None
        out = self.io.run(batch.input_ids, cache, keep, use_cache=bool(multi), states=deep)
        words = None
        if label_tokens is not None:
            assert keep is not None
            first = torch.tensor([ids[0] for ids in label_tokens.word_ids], device=dev)  # (n_words,)
            words = self.io.word_log_probs(out, keep, first)[:, 0]  # (b, n_words)
            if multi:
                later = [label_tokens.word_ids[j] for j in multi]
                rest = self.io.continuations(batch, out.cache, n_prefix, later, self.pad_id, self.max_tokens)  # (b, m)
                words = words.index_add(1, torch.tensor(multi, device=dev), rest)
        if pools and (out.hidden is None or (deep and out.states is None)):
            # The model's forward ran part of its body only (OPT): the features take a pass of their own.
            out = self.io.run(batch.input_ids, again() if again is not None else None, None, states=deep)
        states = out.states or ([out.hidden] if out.hidden is not None else [])
        feats = [self._pool(states, batch, how, layers, n_prefix, prefix_states) for how, layers in pools]
        return words, feats

    # -- internals -------------------------------------------------------------------------------
    def _pool(
        self,
        states: Sequence[torch.Tensor],
        batch: Batch,
        how: str,
        layers: int,
        n_prefix: int,
        prefix_states: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        check_choice(how, POOLINGS, "pooling", "Head")
        if layers > len(states):
            raise ValueError(f"layers={layers} but the model returned {len(states)} hidden layers")
        picked = states[-layers:]
        last = batch.last_index.to(picked[0].device)
        if how == "last":
            rows = torch.arange(last.shape[0], device=last.device)
            return torch.cat([s[rows, last] for s in picked], -1).float()
        n_lead = len(self._lead)
        positions = torch.arange(picked[0].shape[1], device=last.device)
        mask = (positions[None, :] >= max(n_lead - n_prefix, 0)) & (positions[None, :] <= last[:, None])  # (b, L)
        count = mask.sum(1, keepdim=True) + max(n_prefix - n_lead, 0)  # (b, 1)
        vecs = []
        for i, s in enumerate(picked):
            total = torch.where(mask[..., None], s.float(), 0.0).sum(1)  # (b, d)
            if prefix_states is not None and n_prefix:
                total = total + prefix_states[len(prefix_states) - layers + i]
            vecs.append(total / count)
        return torch.cat(vecs, -1)

    def encode(self, prompts: Sequence[str], spans: Spans | None, prefix: str, room: int = 0) -> Encoded:
        """Token ids of ``prefix + prompt`` for each prompt, leading special tokens included, text cut to fit.

        The model reads the tokens of the whole string (tokenizing the parts apart would change the
        tokens at the seam); ``room`` tokens are kept free at the end for label words.
        """
        lead = self._lead
        budget = prompt_budget(self.context_length, room, len(lead))
        if spans is not None and prompts:  # no copy of a huge text: encode_prompts cuts to a quarter of this
            chars = 4 * char_bound(self.tokenizer, budget)
            cut = [cut_fields(p, x, chars) for p, x in zip(prompts, span_lists(spans) or [], strict=True)]
            prompts, spans = [p for p, _ in cut], [x for _, x in cut]
        full = [prefix + p for p in prompts]
        if spans is not None and prefix:
            spans = shift_spans(spans, len(prefix))
        encoded = encode_prompts(self.tokenizer, full, spans, max_length=budget, add_special_tokens=False)
        ids = [lead + x for x in encoded.ids]
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise InputError(f"prompts {empty[:5]} are empty and the tokenizer adds no BOS: nothing to condition on")
        self.last_n_truncated = encoded.n_truncated
        if encoded.n_truncated:
            logger.warning(
                "%d of %d texts did not fit in %d tokens; the end of their text was cut",
                encoded.n_truncated,
                len(prompts),
                self.context_length,
            )
        return Encoded(ids, encoded.n_truncated)

    def _run(
        self,
        prompts: Sequence[str],
        spans: Spans | None,
        prefix: str,
        step: Callable[[Batch, Any, int, Any], list[torch.Tensor]],
        room: int,
        widths: list[int],
        progress: bool,
        want_states: bool = False,
        packed_words: list[int] | None = None,
    ) -> list[np.ndarray]:
        # The leading tokens that every row shares (BOS, instruction, demonstrations, the template's
        # words before the text) are run once. What is shared depends on the prefix and template only,
        # never on the other prompts of the call, so a text's scores do not depend on its neighbours.
        # Identical prompts (same tokens) are run once and their results copied: a prompt's scores
        # never depend on its neighbours, so this changes no number.
        unique: dict[tuple[int, ...], int] = {}
        encoded = self.encode(prompts, spans, prefix, room).ids
        inverse = np.array([unique.setdefault(tuple(x), len(unique)) for x in encoded], dtype=np.int64)
        ids = [list(x) for x in unique]
        # A long prompt runs alone and whole, sharing nothing: one row with no cache attends without a mask
        # (memory linear in its length: an 8k-token prompt after a shared prefix took 2.5 GB more) and keeps
        # no key/value cache unless a label word has several tokens
        short = [i for i, x in enumerate(ids) if len(x) <= LONG_ROW]
        rows = [ids[i] for i in short]
        lead, head = self._lead, prefix + _common_head(prompts, spans)
        n_shared = _shared_length(rows, lead + _ids(self.tokenizer, head)) if (head or lead) and rows else 0
        out = [np.zeros((len(ids), w), dtype=np.float32) for w in widths]
        with torch.inference_mode(), self.io.routed():  # one switch of the model's attention per call
            self._run_part(rows, short, n_shared, step, out, progress, want_states, packed_words)
            for i in sorted(set(range(len(ids))) - set(short)):
                self._run_part([ids[i]], [i], 0, step, out, False, want_states)
        return [o[inverse] if len(o) else np.zeros((len(prompts), o.shape[1]), np.float32) for o in out]

    def _run_part(
        self,
        ids: list[list[int]],
        where: list[int],
        n_shared: int,
        step: Callable[[Batch, Any, int, Any], list[torch.Tensor]],
        out: list[np.ndarray],
        progress: bool,
        want_states: bool,
        packed_words: list[int] | None = None,
    ) -> None:
        """Score ``ids`` (their first ``n_shared`` tokens run once, shared) into rows ``where`` of ``out``.

        With ``packed_words`` (the label words' token ids; ``out`` is then their scores alone) prompts
        are packed several to a row (:func:`~verbalize.engine.batching.pack`) instead of padded.
        """
        if not ids:
            return
        shared, rest = ids[0][:n_shared], Encoded([x[n_shared:] for x in ids], 0)
        prefix_kv, prefix_states = self._shared_prefix(shared, want_states)
        rows = np.asarray(where)
        if packed_words is not None:
            per_row = self.io.prefix_tokens_per_row(len(shared))
            first = torch.tensor(packed_words, device=self.device)
            for packed in tqdm(
                pack(rest.ids, self.batch_size, self.pad_id, self.max_tokens, per_row),
                disable=not progress,
                desc="scoring",
                unit="batch",
            ):
                packed = packed.to(self.device)
                cache = self.io.batch_cache(prefix_kv, packed.input_ids.shape[0])
                words = self._packed_words(packed, cache, len(shared), first).cpu().numpy()  # (R, K, W)
                real = packed.rows >= 0
                out[0][rows[packed.rows[real]]] = words[real]
            return
        for batch in tqdm(
            rest.batches(self.batch_size, self.pad_id, self.max_tokens, self.io.prefix_tokens_per_row(len(shared))),
            disable=not progress,
            desc="scoring",
            unit="batch",
        ):
            batch = batch.to(self.device)
            cache = self.io.batch_cache(prefix_kv, batch.input_ids.shape[0])
            for o, r in zip(out, step(batch, cache, len(shared), prefix_states), strict=True):
                o[rows[batch.rows]] = r.float().cpu().numpy()

    def _packed_words(self, packed: Packed, cache: Any, n_prefix: int, first: torch.Tensor) -> torch.Tensor:
        """Log-probs (R, K, n_words) of one-token label words after each prompt of packed rows."""
        keep = packed.last_index.to(packed.input_ids.device)  # (R, K)
        mask = packed.attention_mask(n_prefix)  # (R, 1, L, P + L)
        out = self.io.run(
            packed.input_ids, cache, keep, attention_mask=mask, position_ids=packed.position_ids + n_prefix
        )
        return self.io.word_log_probs(out, keep, first)

    def _shared_prefix(self, prefix_ids: list[int], want_states: bool) -> tuple[Any, list[torch.Tensor] | None]:
        """:meth:`_prefix_kv`, kept between calls (see :mod:`verbalize.engine.prefixes`)."""
        if not prefix_ids:
            return None, None
        params = list(self.model.parameters())
        # the weights' in-place edits (load_state_dict) bump their version: a changed model never reads an old prefix
        version = (sum(p._version for p in params), params[0].dtype, params[0].device)
        key = (tuple(prefix_ids), want_states, getattr(self.model.config, "_attn_implementation", None), version)
        memo = _MEMOS.setdefault(self.model, PrefixMemo())
        return memo.get(key, lambda: self._prefix_kv(prefix_ids, want_states))

    def _prefix_kv(self, prefix_ids: list[int], want_states: bool = False) -> tuple[Any, list[torch.Tensor] | None]:
        """Key/value cache of the shared prefix and, if wanted, each layer's sum of its hidden states after BOS."""
        if not prefix_ids:
            return None, None
        ids = torch.tensor([prefix_ids], device=self.device)  # (1, P)
        out = self.io.run(ids, None, None, use_cache=True, states=want_states)
        sums = [s[0, len(self._lead) :].float().sum(0) for s in out.states or []] if want_states else None  # (d,)
        return model_io.snapshot(out.cache), sums

    def _choose(self, logits: str) -> ModelIO:
        """The logits path for this model: the first that the probe proves exact (cached per model)."""
        check_choice(logits, ("auto", *model_io.PATHS), "logits", "Scorer")
        implementation = getattr(self.model.config, "_attn_implementation", None)
        if implementation == prefix_attention.NAME:  # another thread is scoring through the model now
            implementation = prefix_attention.BASE
        if logits == "auto" and self.model in _PATH_OF:
            path, shared, packs, probed = _PATH_OF[self.model]
            if probed == implementation:  # (its owner may have changed it since the probe)
                return ModelIO(self.model, path, shared, packs)
        paths = model_io.PATHS if logits == "auto" else (logits,)
        n_ids = min(len(self.tokenizer), self.model.get_input_embeddings().weight.shape[0])
        with float_activations():  # int8 layers: check the path, not activation rounding (see there)
            io = model_io.choose(self.model, self._score_probe, n_ids, paths)
            io = self._packing(io, n_ids)
        if logits == "auto":
            _PATH_OF[self.model] = (io.path, io.shared, io.packs, implementation)
        return io

    def _packing(self, io: ModelIO, n_ids: int) -> ModelIO:
        """``io`` with packed rows allowed where a probe scores them as each prompt alone; else ``io``.

        The probe packs four prompts of 5, 4, 2 and 1 tokens after a cached two-token prefix into two
        rows of 8 (two prompts end to end in each, then padding), through the cache the scorer uses,
        and compares each word's log-prob with the model's own forward on that prompt alone
        (:func:`model_io.tolerance`). A model whose tokens see past their own prompt (recurrent state,
        a position bias that the mask does not cancel, a sliding window) fails it and keeps padded rows.
        """
        if io.window is not None:
            return io
        ids = [(7 + 53 * i) % n_ids for i in range(14)]
        prefix, rows, words = ids[:2], [ids[2:7], ids[7:11], ids[11:13], ids[13:14]], [ids[0], ids[4], ids[12]]
        packed_io = ModelIO(io.model, io.path, io.shared, packs=True)
        try:
            self.io = packed_io
            with torch.inference_mode():
                want = torch.tensor(
                    [[model_io.own_log_prob(self.model, prefix + r, (w,)) for w in words] for r in rows]
                )
                kv, _ = self._prefix_kv(prefix)
                (packed,) = pack(rows, 64, self.pad_id, None, row=8)
                assert (packed.rows >= 0).sum(1).min() >= 2  # every row holds prompts end to end
                packed = packed.to(self.device)
                with packed_io.routed():
                    got = self._packed_words(
                        packed, packed_io.batch_cache(kv, 2), 2, torch.tensor(words, device=self.device)
                    )
            got_rows = torch.zeros_like(want, dtype=torch.float64)
            real = packed.rows >= 0
            got_rows[torch.as_tensor(packed.rows[real])] = got[torch.as_tensor(real)].double().cpu()
            error = float((got_rows - want).abs().max())
        except Exception as exc:  # noqa: BLE001 - the model keeps padded rows
            logger.debug("%s: no packed rows: %s: %s", self.model.config.model_type, type(exc).__name__, exc)
            return io
        finally:
            self.io = io
        ok = error <= model_io.tolerance(self.model)
        logger.debug("%s: packed rows: %s (probe error %.1e)", self.model.config.model_type, ok, error)
        return packed_io if ok else io

    def _score_probe(self, io: ModelIO, prefix: list[int], rows: list[list[int]], words: Any) -> torch.Tensor:
        """Word log-probs (rows, words) through ``io`` and every step scoring takes (see :func:`model_io.choose`)."""
        self.io = io
        tokens = LabelTokens(tuple(map(str, words)), tuple(map(str, words)), np.arange(len(words)), tuple(words))
        kv, _ = self._prefix_kv(prefix)
        batch = pad_batch(rows, np.arange(len(rows)), self.pad_id).to(self.device)
        got, _ = self.forward(batch, io.batch_cache(kv, len(rows)), len(prefix), tokens)
        assert got is not None
        return got


def _exact(model: Any, tokenizer: Any) -> None:
    """Raise :class:`ModelLoadError` unless ``model``'s scores pass the Scorer's exactness probe (``dtype="auto"``)."""
    Scorer(model, tokenizer)


def aggregate(word_scores: np.ndarray, word_label: np.ndarray, n_labels: int, how: str = "logsumexp") -> np.ndarray:
    """Combine word log-probs (n, n_words) into label scores (n, n_labels), in float64.

    ``logsumexp`` is the log of the label's total probability (the sum over its words),
    ``mean`` the mean log-prob of its words, ``max`` its best word.
    """
    words = torch.from_numpy(np.asarray(word_scores, dtype=np.float64))
    return label_logits(words, word_label, n_labels, how).numpy()


def label_logits(words: torch.Tensor, word_label: np.ndarray, n_labels: int, how: str = "logsumexp") -> torch.Tensor:
    """:func:`aggregate` on a tensor, differentiable (training uses it): (b, n_words) -> (b, n_labels)."""
    check_choice(how, AGGREGATIONS, "aggregation", "Verbalizer")
    cols = []
    for k in range(n_labels):
        s = words[:, torch.as_tensor(np.flatnonzero(word_label == k), device=words.device)]  # (b, words of label k)
        if how == "logsumexp":
            cols.append(torch.logsumexp(s, dim=1))
        elif how == "mean":
            cols.append(s.mean(dim=1))
        else:
            cols.append(s.max(dim=1).values)
    return torch.stack(cols, dim=1)


def _common_head(prompts: Sequence[str], spans: Spans | None) -> str:
    """The text before the first field when every prompt has the same one (a template's fixed start)."""
    lists = span_lists(spans)
    if not lists or not prompts or not all(lists):
        return ""
    head = prompts[0][: lists[0][0][0]]
    return head if all(p[: x[0][0]] == head for p, x in zip(prompts, lists, strict=True)) else ""


def _shared_length(rows: list[list[int]], prefix: list[int]) -> int:
    """How many leading tokens of ``prefix`` every row starts with, leaving each row at least one token."""
    n = len(prefix)
    for row in rows:
        n = min(n, len(row) - 1)
        if row[:n] != prefix[:n]:
            n = next(i for i, (a, b) in enumerate(zip(row, prefix[:n], strict=False)) if a != b)
    return max(n, 0)
