"""The one adapter between the scorer and transformers' internals: logits and the key/value cache.

Logits come one of three ways (:data:`PATHS`), each a :class:`ModelIO`:

- ``"model"``: the model's own forward computes them, at the positions asked for only
  (``logits_to_keep`` as a (batch, positions) tensor, the transformers 5 contract). Whatever the
  family does after its output layer (Gemma's soft-capping, Cohere's ``logit_scale``, Granite's
  ``logits_scaling``, anything new) is applied by the model itself.
- ``"hand"``: the body runs alone and this module applies the output embedding and the output
  transforms it knows (:data:`TRANSFORMS`); for models whose forward lacks per-row ``logits_to_keep``.
- ``"full"``: the model's own forward computes logits at every position (memory-hungry) and the
  positions asked for are picked here; the last resort.

Which one is exact for a given model is never assumed: the :class:`~verbalize.engine.scoring.Scorer` probes
each against the model's plain ``model(input_ids).logits`` (see :func:`choose`). The cache helpers
build transformers' ``DynamicCache``, snapshot its per-layer state, and expand a shared prefix to a
batch or pick rows of it (sliding-window layers keep their true length). ``tests/test_zoo.py`` holds
the contract tests that break when a transformers upgrade changes any of this.

A shared prefix is either expanded to every row of a batch (a view, but each layer's cache update
and grouped-query attention then copy it per row), or, where :func:`choose`'s probe proves it exact
for the model, kept as one row in a :class:`~verbalize.engine.prefix_attention.PrefixCache` that the
attention function of :mod:`verbalize.engine.prefix_attention` reads directly (``ModelIO.shared``).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from verbalize.engine import prefix_attention
from verbalize.engine.batching import KV_TOKENS, Batch
from verbalize.engine.prefix_attention import PrefixCache
from verbalize.errors import InputError, ModelLoadError, check_choice

logger = logging.getLogger(__name__)

PATHS = ("model", "hand", "full")
# config attribute -> what the family's forward does with it after the output layer
TRANSFORMS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "final_logit_softcapping": lambda x, cap: torch.tanh(x / cap) * cap,  # Gemma 2/3
    "logit_scale": lambda x, scale: x * scale,  # Cohere
    "logits_scaling": lambda x, scale: x / scale,  # Granite
}


@dataclass(frozen=True)
class Pass:
    """What one forward gives: logits at the kept positions, hidden states, the cache."""

    logits: torch.Tensor | None  # (b, K, V) at the positions asked for, or None
    hidden: torch.Tensor | None  # (b, L, d) the body's last hidden state (after its final norm), if seen
    states: list[torch.Tensor] | None  # every layer's hidden states, when asked for and seen
    cache: Any


@dataclass(frozen=True)
class LayerKV:
    """One cache layer's state: keys and values (b, heads, T, head_dim) and the true length seen."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    length: int | None  # a sliding-window layer keeps fewer keys than the positions it has seen


class ModelIO:
    """Runs a causal LM and returns logits at chosen positions by one of :data:`PATHS`.

    Parameters
    ----------
    model : transformers causal LM
    path : {"model", "hand", "full"}
    shared : bool, default False
        Keep a cached prefix as one row (:class:`PrefixCache`) instead of expanding it to every row;
        only for models that :func:`share_prefix` proved exact with it; the model's attention runs
        through :data:`prefix_attention.NAME` during the calls that read it only (see :meth:`routed`).
    packs : bool, default False
        Several prompts may share a row, each seeing only itself (a block-diagonal mask and their own
        positions, :func:`verbalize.engine.batching.pack`); only for models that the Scorer's probe
        proved exact with it.

    A ``ModelIO`` keeps no state between calls: threads may call one at once.
    """

    def __init__(self, model: Any, path: str = "model", shared: bool = False, packs: bool = False):
        check_choice(path, PATHS, "path", "ModelIO")
        self.model = model
        self.path = path
        self.shared = shared
        self.packs = packs
        self.window = window(model.config)
        self.wide = wide_words(model)

    def batch_cache(self, layers: list[LayerKV] | None, b: int) -> Any:
        """A fresh cache holding a one-row snapshot (a shared prefix) for a batch of ``b`` rows, or None."""
        if layers is None:
            return None
        if self.shared:
            return PrefixCache([(kv.keys, kv.values) for kv in layers])  # type: ignore[misc]
        return expand(layers, b, self.model.config)

    def routed(self) -> contextlib.AbstractContextManager[None]:
        """A block in which a shared prefix can be read (the model routed through the attention function)."""
        return prefix_attention.routed(self.model) if self.shared else contextlib.nullcontext()

    def prefix_tokens_per_row(self, n_prefix: int) -> int:
        """Tokens of a shared prefix that every row of a batch holds a copy of (0 when it is shared)."""
        return 0 if self.shared else n_prefix

    @property
    def config(self) -> Any:
        return self.model.config.get_text_config(decoder=True)

    def run(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        keep: torch.Tensor | None = None,
        *,
        use_cache: bool = False,
        states: bool = False,
        **kw: Any,
    ) -> Pass:
        """One forward of ``input_ids`` (b, L) after ``cache``; logits at ``keep`` (b, K) positions, if given.

        ``kw`` (``attention_mask``, ``position_ids``) go to the model unchanged.
        """
        if cache is None and use_cache:
            cache = new_cache(self.model.config)
        args = dict(input_ids=input_ids, use_cache=use_cache or cache is not None, **kw)
        if states:
            args["output_hidden_states"] = True
        if keep is None or self.path == "hand":
            args[_cache_arg(self.model.base_model)] = cache
            with _routed(self.model, cache):
                out = self.model.base_model(**args)
            h = out.last_hidden_state  # (b, L, d)
            logits = None if keep is None else self.hand_logits(_take(h, keep))  # (b, K, V)
            return Pass(logits, h, list(out.hidden_states) if states else None, _out_cache(out))
        args[_cache_arg(self.model)] = cache
        if self.path == "model":
            args["logits_to_keep"] = keep
        with _capture(self.model.base_model) as seen, _routed(self.model, cache):
            out = self.model(**args)
        body = seen[-1] if seen else None  # None when the forward runs a part of base_model only (OPT)
        h = None if body is None else body.last_hidden_state if hasattr(body, "last_hidden_state") else body[0]
        logits = out.logits if self.path == "model" else _take(out.logits, keep)  # (b, K, V)
        if logits.dim() != 3 or logits.shape[:2] != keep.shape:  # transformers < 5.x: 2-D keep not per row
            raise RuntimeError(f"logits_to_keep of shape {tuple(keep.shape)} gave logits {tuple(logits.shape)}")
        all_states = getattr(body, "hidden_states", None) if states else None
        return Pass(logits, h, list(all_states) if all_states else None, _out_cache(out))

    def continuations(
        self, batch: Batch, cache: Any, n_prefix: int, words: list[tuple[int, ...]], pad_id: int, max_tokens: int | None
    ) -> torch.Tensor:
        """Sum of log p(token_k | prompt, tokens_<k) for k >= 1 of each word, shape (b, n_words).

        ``cache`` holds ``n_prefix`` shared tokens and the batch's prompts. The (prompt, word) pairs
        run in chunks under the batch's token budget (pairs x (prompt + word tokens) <= ``max_tokens``,
        as rows x tokens for the prompts; all pairs at once when None), each chunk with its own copy of
        its prompts' cache rows, so memory does not grow with prompts x words. A :class:`PrefixCache`
        keeps the prefix shared by all chunks (only the prompts' rows are picked); an expanded prefix
        is copied with every pair, so it counts in the chunk's budget of :data:`KV_TOKENS` too.

        Raises
        ------
        InputError
            When a prompt and a word reach past a sliding attention window: the right padding of the
            cached prompts would then shift that window (not supported yet).
        """
        b, length = batch.input_ids.shape
        w, width = len(words), max(len(x) for x in words) - 1
        limit = self.window
        if limit is not None and n_prefix + length + width > limit - 1:
            raise InputError(
                f"{self.config.model_type}: a prompt of {n_prefix + length} tokens with multi-token label words "
                f"exceeds the model's sliding attention window ({limit} tokens), which verbalize cannot score "
                "exactly yet; use single-token label words or shorter prompts (fewer demonstrations)"
            )
        dev = batch.input_ids.device
        inputs = torch.full((w, width), pad_id, dtype=torch.long, device=dev)  # (w, C)
        targets = torch.full((w, width), -1, dtype=torch.long, device=dev)  # (w, C)
        for i, ids in enumerate(words):
            inputs[i, : len(ids) - 1] = torch.tensor(ids[:-1])
            targets[i, : len(ids) - 1] = torch.tensor(ids[1:])
        shared = isinstance(cache, PrefixCache)
        layers = None if shared else snapshot(cache)
        own = cache.own() if shared else None
        last, prompt_mask = batch.last_index.to(dev), batch.attention_mask.to(dev)  # (b,), (b, L)
        pair_row = torch.arange(b, device=dev).repeat_interleave(w)  # (b*w,)
        pair_word = torch.arange(w, device=dev).repeat(b)  # (b*w,)
        size = max(1, max_tokens // (length + width)) if max_tokens else b * w
        if not shared:
            size = min(size, max(1, KV_TOKENS // (n_prefix + length + width)))
        steps = torch.arange(width, device=dev)  # (C,)
        sums = []
        for start in range(0, b * w, size):
            rows, cols = pair_row[start : start + size], pair_word[start : start + size]  # (r,)
            n = rows.shape[0]
            ones = torch.ones(n, 1, dtype=torch.long, device=dev)
            mask = torch.cat([ones.expand(n, n_prefix), prompt_mask[rows], ones.expand(n, width)], 1)  # (r, P+L+C)
            positions = n_prefix + last[rows, None] + 1 + steps[None, :]  # (r, C)
            if own is not None:
                picked = cache.rows([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in own])
            else:
                picked = select(layers, rows, self.model.config)  # type: ignore[arg-type]
            out = self.run(
                inputs[cols],
                picked,
                steps.expand(n, width),
                attention_mask=mask,
                position_ids=positions,
            )
            logp = torch.log_softmax(out.logits.float(), dim=-1)  # type: ignore[union-attr]  # (r, C, V)
            t = targets[cols]  # (r, C)
            sums.append((logp.gather(-1, t.clamp(min=0)[..., None])[..., 0] * (t >= 0)).sum(-1))  # (r,)
        return torch.cat(sums).view(b, w)

    def hand_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The output embedding and the known output transforms of :data:`TRANSFORMS`: (..., d) -> (..., V)."""
        return _transformed(self.model.get_output_embeddings()(h), self.config)  # (..., V)

    def word_log_probs(self, out: Pass, keep: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """log p of vocabulary entries ``first`` (n,) at the ``keep`` (b, K) positions of ``out``: (b, K, n).

        Where :attr:`wide` (see :func:`wide_words`), their logits are computed in float32 from the body's
        float32 last hidden state instead of read off the model's narrow ones, which a bfloat16 output
        layer rounds to 8 bits (a step of 0.06 at a logit of 15): the normalizer is a text's own and
        cancels between its labels, the words' logits do not.
        """
        assert out.logits is not None
        logits = out.logits.float()  # (b, K, V)
        if self.wide and out.hidden is not None and out.hidden.dtype == torch.float32:
            logits = logits.clone() if logits is out.logits else logits
            logits[..., first] = row_logits(self.model, _take(out.hidden, keep), first)
        return torch.log_softmax(logits, dim=-1)[..., first]


def row_logits(model: Any, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float32 logits of the vocabulary entries ``rows`` (n,) from hidden states ``h`` (..., d): (..., n)."""
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    weight = head.weight[rows].float()  # (n, d): the rows only, not a float32 copy of the whole layer
    logits = torch.nn.functional.linear(h.float(), weight, None if bias is None else bias[rows].float())
    return _transformed(logits, model.config.get_text_config(decoder=True))


WIDE_WORDS_TOLERANCE = 4.0
"""How many of the narrow format's rounding steps (of |h|·|w| plus |logit|) float32 row logits may lie from
the model's own logits in :func:`wide_words`'s check; an output transform that this module does not know
moves them by a large fraction of the logit."""

_WIDE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def wide_words(model: Any) -> bool:
    """Whether label words' logits may be computed in float32 (:meth:`ModelIO.word_log_probs`); checked once.

    Only for models whose body gives its last hidden state in float32 while the output layer is narrow
    (``verbalize_wide_hidden``, set by :func:`verbalize.engine.models.widen_residual`). One 8-token forward
    checks that :func:`row_logits` lie within rounding of the model's own logits on 256 vocabulary rows
    (the output layer, its bias and the transforms of :data:`TRANSFORMS` are all it does); otherwise the
    narrow logits are used as they are.
    """
    if not getattr(model, "verbalize_wide_hidden", False):
        return False
    known = _WIDE.get(model)
    if known is None:
        known = _WIDE[model] = _check_wide(model)
    return known


def _check_wide(model: Any) -> bool:
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or weight.dtype not in (torch.bfloat16, torch.float16):
        return False
    n_vocab = weight.shape[0]
    ids = (torch.arange(1, 9, device=weight.device) * 7919 % n_vocab)[None]  # (1, 8), any tokens
    rows = torch.arange(0, n_vocab, max(1, n_vocab // 256), device=weight.device)  # (n,)
    try:
        with torch.inference_mode(), _capture(model.base_model) as seen:
            logits = model(input_ids=ids).logits[..., rows].float()  # (1, 8, n)
        hidden = seen[-1].last_hidden_state if seen and hasattr(seen[-1], "last_hidden_state") else None
        if hidden is None or hidden.dtype != torch.float32:
            return False
        with torch.inference_mode():
            wide = row_logits(model, hidden, rows)  # (1, 8, n)
            scale = hidden.abs() @ weight[rows].float().abs().T + logits.abs()  # (1, 8, n)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        logger.info("%s: label logits from the narrow output layer (%s)", type(model).__name__, exc)
        return False
    step = torch.finfo(weight.dtype).eps
    error = float(((wide - logits).abs() / (scale * step + 1e-6)).max())
    if error > WIDE_WORDS_TOLERANCE:
        logger.info("%s: label logits from the narrow output layer (check: %.1f steps)", type(model).__name__, error)
        return False
    return True


def _transformed(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """``logits`` with the output transforms of :data:`TRANSFORMS` that ``config`` sets."""
    for name, transform in TRANSFORMS.items():
        value = getattr(config, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value:
            logits = transform(logits, value)
    return logits


def choose(
    model: Any,
    score: Callable[[ModelIO, list[int], list[list[int]], tuple[tuple[int, ...], ...]], torch.Tensor],
    n_ids: int,
    paths: tuple[str, ...] = PATHS,
) -> ModelIO:
    """The first of ``paths`` whose scores equal the model's own forward on a probe.

    ``score(io, prefix, rows, words)`` must give log p(word | prefix + row), shape (rows, words),
    the way scoring does it (a cached shared prefix, right-padded rows); the probe has two rows of
    different lengths and a one- and a three-token word, with ids below ``n_ids``; see :func:`tolerance`.

    Raises
    ------
    ModelLoadError
        When no path is exact for this model: the message names the model type and each path's failure.
    """
    ids = [(5 + 37 * i) % n_ids for i in range(12)]
    prefix, rows, words = ids[:3], [ids[3:8], ids[8:10]], ((ids[10],), (ids[11], ids[3], ids[9]))
    tol = tolerance(model)
    problems = []
    with torch.inference_mode():
        want = torch.tensor([[own_log_prob(model, prefix + r, w) for w in words] for r in rows])  # (2, 2)
        for path in paths:
            io = ModelIO(model, path)
            if path == "model" and "logits_to_keep" not in inspect.signature(model.forward).parameters:
                problems.append(f"{path}: its forward takes no logits_to_keep")
                continue
            try:
                error = float((score(io, prefix, rows, words).double().cpu() - want).abs().max())
            except Exception as exc:  # noqa: BLE001 - a failure of one path only rules that path out
                problems.append(f"{path}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if error <= tol:
                logger.debug("%s: logits path %r (probe error %.1e)", model.config.model_type, path, error)
                return share_prefix(io, lambda x: score(x, prefix, rows, words), want, tol)
            problems.append(f"{path}: log-probs differ from the model's own forward by {error:.1e} (> {tol:.0e})")
    raise ModelLoadError(
        f"model type {model.config.model_type!r} ({type(model).__name__}) cannot be scored exactly: "
        + "; ".join(problems)
        + ". verbalize refuses rather than return wrong scores; please report this model type"
    )


def share_prefix(io: ModelIO, score: Callable[[ModelIO], torch.Tensor], want: torch.Tensor, tol: float) -> ModelIO:
    """``io`` with its cached prefix shared, not expanded per row, where that is exact for the model; else ``io``.

    See :func:`prefix_attention.enable`: ``score`` (the probe of :func:`choose`) must again give ``want``.
    """
    if io.window is not None:  # a sliding window sees part of the prefix only
        return io
    shared = ModelIO(io.model, io.path, shared=True)
    ok = prefix_attention.enable(io.model, lambda: float((score(shared).double().cpu() - want).abs().max()) <= tol)
    return shared if ok else io


def tolerance(model: Any) -> float:
    """Largest |log-prob difference| a probe accepts: 1e-4 with float32 weights, 5e-2 with float16 or
    quantized ones (tensor subclasses, ``is_quantized``), where other shapes round differently, and
    0.25 with bfloat16 (8 significant bits: a 30-layer model's log-probs move by ~0.1 between two
    shapes of the same input). A wrong position or mask moves them by whole units."""
    params = list(model.parameters())
    if any(p.dtype == torch.bfloat16 for p in params):
        return 0.25
    low = any(p.dtype == torch.float16 for p in params)
    flagged = getattr(model, "is_quantized", False) or getattr(model, "verbalize_int8", False)
    quantized = bool(flagged) or any(type(p.data) is not torch.Tensor for p in params)
    return 5e-2 if low or quantized else 1e-4


def own_log_prob(model: Any, context: list[int], word: tuple[int, ...]) -> float:
    """log p(word | context) from the model's plain forward on the whole sequence."""
    ids = torch.tensor([context + list(word[:-1])], device=next(model.parameters()).device)  # (1, T)
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (T, V)
    return sum(float(logp[len(context) - 1 + k, t]) for k, t in enumerate(word))


# -- key/value cache -----------------------------------------------------------------------------------


def new_cache(config: Any) -> Any:
    """An empty ``DynamicCache`` laid out for ``config`` (sliding-window layers where the model has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def snapshot(cache: Any) -> list[LayerKV]:
    """Each layer's keys, values and true length; the tensors are shared, not copied.

    A cache layer replaces its tensors on update (``torch.cat``), so a snapshot stays valid after the
    cache is run further.
    """
    return [
        LayerKV(
            getattr(layer, "keys", None) if getattr(layer, "is_initialized", False) else None,
            getattr(layer, "values", None) if getattr(layer, "is_initialized", False) else None,
            getattr(layer, "cumulative_length", None),
        )
        for layer in cache.layers
    ]


def expand(layers: list[LayerKV] | None, b: int, config: Any) -> Any:
    """A fresh cache holding a one-row snapshot (a shared prefix) for ``b`` rows, without copying it."""
    if layers is None:
        return None
    return _fill(new_cache(config), layers, lambda t: t[:1].expand(b, -1, -1, -1))  # (b, heads, P, head_dim)


def reusable(cache: Any, config: Any) -> Callable[[], Any]:
    """A function giving a fresh cache equal to ``cache`` as it is now, before a forward runs it further."""
    if isinstance(cache, PrefixCache):
        return cache.rows
    layers = snapshot(cache)
    b = next((kv.keys.shape[0] for kv in layers if kv.keys is not None), 1)
    return lambda: expand(layers, b, config)


def select(layers: list[LayerKV], rows: torch.Tensor, config: Any) -> Any:
    """A fresh cache holding rows ``rows`` (r,) of a snapshot (a row may repeat)."""
    return _fill(new_cache(config), layers, lambda t: t.index_select(0, rows))  # (r, heads, T, head_dim)


def window(config: Any) -> int | None:
    """The smallest sliding window of the model's cache layers, or None when all attend to everything."""
    sizes = [layer.sliding_window for layer in new_cache(config).layers if getattr(layer, "is_sliding", False)]
    return min(sizes) if sizes else None


def _fill(cache: Any, layers: list[LayerKV], rows: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if len(cache.layers) != len(layers):
        raise RuntimeError(f"the cache has {len(cache.layers)} layers, the snapshot {len(layers)}")
    for layer, kv in zip(cache.layers, layers, strict=True):
        if kv.keys is None or kv.values is None:
            continue
        k, v = rows(kv.keys), rows(kv.values)
        # Handed over as they are: the layer's first update concatenates them with the new keys anyway.
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        if kv.length is not None:
            layer.cumulative_length = kv.length
    return cache


def _take(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows' own positions: x (b, L, ...) and keep (b, K) -> (b, K, ...)."""
    index = keep.to(x.device).view(*keep.shape, *([1] * (x.dim() - 2)))  # (b, K, 1...)
    return torch.take_along_dim(x, index, dim=1)


_CACHE_ARG: dict[type, str] = {}


def _cache_arg(module: torch.nn.Module) -> str:
    """The forward's key/value cache argument: ``cache`` (transformers >= 5.25) or ``past_key_values``."""
    kind = type(module)
    if kind not in _CACHE_ARG:
        params = inspect.signature(module.forward).parameters
        _CACHE_ARG[kind] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARG[kind]


def _out_cache(out: Any) -> Any:
    """The cache a forward returned, under either name (see :func:`_cache_arg`)."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else getattr(out, "past_key_values", None)


@contextlib.contextmanager
def _routed(model: Any, cache: Any) -> Iterator[None]:
    """Let the attention of a forward read ``cache``'s shared prefix, and check that every layer did."""
    if not isinstance(cache, PrefixCache):
        yield
        return
    with prefix_attention.routed(model), prefix_attention.active(cache):
        yield
    if len(cache.used) != len(cache.layers):
        raise RuntimeError(
            f"the attention of {len(cache.layers) - len(cache.used)} of {len(cache.layers)} layers did not read the "
            "shared prefix (the model does not route its attention through the AttentionInterface)"
        )


# The list that forward hooks of :func:`_capture` fill in this thread (or task); None outside a capture.
_SEEN: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("verbalize_seen", default=None)


@contextlib.contextmanager
def _capture(module: torch.nn.Module) -> Iterator[list[Any]]:
    """Record what ``module`` returns during the block (read only: the model's computation is unchanged).

    The hook sits on the shared model while the block runs, so it also sees forwards that other
    threads run meanwhile: it records only those of the thread (context) that opened the block.
    """
    seen: list[Any] = []
    token = _SEEN.set(seen)

    def record(_module: Any, _args: Any, out: Any) -> None:
        if _SEEN.get() is seen:
            seen.append(out)

    handle = module.register_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()
        _SEEN.reset(token)
