"""Attention of a batch against a shared prefix that is never copied per row (used by :mod:`.model_io`).

With a long shared prefix (instruction, many demonstrations), expanding its key/value cache to every
row of a batch costs more than the arithmetic: each layer's ``torch.cat`` copies the prefix once per
row, and grouped-query attention copies it again per query head. Here the prefix stays one row
(:class:`PrefixCache` keeps it beside each layer's cache, which holds the rows' own keys only) and
the attention function registered under :data:`NAME` in transformers' ``AttentionInterface``
computes, for each key/value head,

- all rows' queries (every query head of the group, every position) against the prefix's keys: one
  matrix product of (rows x group x positions) by the prefix length, in chunks;
- each row's queries against its own keys (small), with the model's causal/padding mask;

and merges the two softmax parts exactly with a common maximum (the split-K merge of FlashAttention).

Only the plain case is computed this way: float32/64, no soft-capping, sliding window, sinks or
position bias, a boolean mask that lets every query see the whole prefix, no gradient. Anything else
goes to transformers' own SDPA function on the concatenated keys (what the unshared cache does), and
with no :class:`PrefixCache` in use the function is SDPA itself, so a model switched to :data:`NAME`
computes everything else exactly as before. Whether a model routes its attention through this
function at all (and every layer of it) is checked on each forward and by the probe of
:func:`verbalize.engine.model_io.choose`, which enables it only where it equals the model's own forward.

The model is switched to :data:`NAME` only while a scoring call runs (:func:`routed`, counted across
threads: the first call in switches, the last one out restores), so a caller's own model keeps its
attention implementation. Which :class:`PrefixCache` a forward reads is per thread (a context
variable), so threads that score through one model at once never see each other's prefix.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from verbalize.errors import InputError

logger = logging.getLogger(__name__)

NAME = "verbalize_prefix"
BASE = "sdpa"  # the implementation that NAME stands in for (and runs whenever it cannot take the shared path)
CHUNK = 1 << 21  # floats of prefix scores computed at a time (8 MB in float32) where the fused kernel is not used
FUSED = True  # use PyTorch's CPU flash-attention kernel for the prefix part where it applies
KEY_BLOCK = 16
"""Where the prefix is joined to the rows' keys on CPU (the path narrow formats take), the keys are padded
with masked zeros to a multiple of this many: PyTorch's CPU flash-attention kernel ran ~1.5-2x slower per
score at other key lengths (bfloat16, 8 rows of 100-136 keys; ~1.25x in float32; Intel Xeon with AVX2,
AVX-512 VNNI, AVX-512 BF16, AMX-BF16 and AMX-INT8, one thread). A masked key adds exactly nothing to a softmax."""
# Attention keywords that do not change the result (anything else non-None takes the SDPA path)
_BENIGN = {"position_ids", "cache_position", "use_cache", "output_attentions", "is_causal", "position_embeddings"}
_ACTIVE: contextvars.ContextVar[PrefixCache | None] = contextvars.ContextVar("verbalize_prefix_cache", default=None)


class PrefixLayer(DynamicLayer):
    """A cache layer whose first ``n_prefix`` positions are a shared one-row prefix kept apart.

    ``keys``/``values`` hold the rows' own tokens only and are all that ``update`` returns; the
    lengths it reports (and so the masks and positions the model builds) count the prefix too.
    """

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # (1, kv_heads, P, head_dim)
        self.n_prefix = int(prefix_keys.shape[-2])

    def get_seq_length(self) -> int:
        return self.n_prefix + super().get_seq_length()


class PrefixCache(DynamicCache):
    """One :class:`PrefixLayer` per layer: a shared prefix for a batch of any number of rows."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]]):
        self.prefix, self.prefix_layers = prefix, [PrefixLayer(k, v) for k, v in prefix]
        Cache.__init__(self, layers=list(self.prefix_layers))
        self.used: set[int] = set()  # layers whose attention ran through :func:`attention` (checked by model_io)

    def rows(self, own: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> PrefixCache:
        """A fresh cache with the same prefix and, if given, each layer's own keys/values (r, kv_heads, T, d)."""
        out = PrefixCache(self.prefix)
        for layer, (k, v) in zip(out.prefix_layers, own or [], strict=False):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        return out

    def own(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's own keys and values (b, kv_heads, T, d), after a forward."""
        return [(layer.keys, layer.values) for layer in self.prefix_layers]  # type: ignore[misc]


def register() -> None:
    """Make :data:`NAME` known to transformers (attention function and its mask, which is SDPA's)."""
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def enable(model: Any, exact: Callable[[], bool]) -> bool:
    """Whether ``model`` can read a shared prefix: it runs :data:`BASE` through the ``AttentionInterface``
    and ``exact()`` (a probe scoring through a :class:`PrefixCache`) holds while it is :func:`routed`.

    The model is left as it was: scoring routes it to :data:`NAME` during each call only.
    """
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if not routable(model) or can_set is None or not can_set():
        return False
    register()
    try:
        with routed(model):
            ok = switched(model) and exact()
    except Exception as exc:  # noqa: BLE001 - the model keeps its expanded prefix
        logger.debug("%s: no shared prefix: %s: %s", model.config.model_type, type(exc).__name__, exc)
        ok = False
    logger.debug("%s: shared prefix attention: %s", model.config.model_type, ok)
    return ok


def routable(model: Any) -> bool:
    """Whether ``model``'s own attention implementation is one that :func:`routed` may stand in for."""
    return getattr(model.config, "_attn_implementation", None) in (BASE, NAME)


def switched(model: Any) -> bool:
    """Whether ``model`` runs its attention through :data:`NAME` now (inside :func:`routed`)."""
    return getattr(model.config, "_attn_implementation", None) == NAME


# model -> [calls inside routed() now, the implementation to restore when the last one ends]. The
# model is switched while any thread scores through it and restored after: a caller's own model is
# never left changed, and one thread's restore never pulls the function from under another's forward.
_ROUTED: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_ROUTED_LOCK = threading.Lock()


@contextlib.contextmanager
def routed(model: Any) -> Iterator[None]:
    """Run ``model``'s attention through :data:`NAME` in the block (from any number of threads at once).

    Raises
    ------
    InputError
        When the model's attention implementation is no longer :data:`BASE` (changed by its owner
        since the scorer chose the shared prefix).
    """
    with _ROUTED_LOCK:
        entry = _ROUTED.get(model)
        if entry is None:
            before = getattr(model.config, "_attn_implementation", None)
            if before not in (BASE, NAME):
                raise InputError(
                    f"{model.config.model_type}: the model's attention implementation is {before!r}, not {BASE!r} as "
                    "when its Scorer chose to share the cached prefix; build a new Scorer (or Verbalizer) for the "
                    f"model as it is now, or set it back with model.set_attn_implementation({BASE!r})"
                )
            register()
            if before != NAME:
                model.set_attn_implementation(NAME)
            entry = _ROUTED[model] = [0, before]
        entry[0] += 1
    try:
        yield
    finally:
        with _ROUTED_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _ROUTED[model]
                if entry[1] != NAME:
                    model.set_attn_implementation(entry[1])


@contextlib.contextmanager
def active(cache: PrefixCache) -> Iterator[None]:
    """Route the attention of the forwards run in the block to ``cache``'s shared prefix."""
    cache.used.clear()
    token = _ACTIVE.set(cache)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function registered as :data:`NAME`: query (b, H, L, d) -> output (b, L, H, d)."""
    cache = _ACTIVE.get()
    if cache is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    idx: int = module.layer_idx  # type: ignore[assignment]
    layer = cache.prefix_layers[idx]
    cache.used.add(idx)
    kp, vp = layer.prefix_keys, layer.prefix_values  # (1, Hkv, P, d)
    own_mask = _own_mask(query, key, kp, attention_mask, dropout, kwargs)
    if own_mask is None:  # not the plain case: the unshared computation, exactly as before
        key, value, attention_mask = joined(kp, vp, key, value, attention_mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return split(query, kp, vp, key, value, own_mask, scale), None


def joined(
    kp: torch.Tensor, vp: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The shared prefix's keys and values (1, Hkv, P, d) put before every row's own (b, Hkv, T, d), and the mask.

    On CPU with a boolean mask over all of them (b' or 1, 1, L, P + T), keys and values get masked zero
    entries up to a multiple of :data:`KEY_BLOCK` (see there); otherwise they are joined as they are.
    """
    b, kv_heads, n_keys = key.shape[0], key.shape[1], kp.shape[2] + key.shape[2]
    pad = (-n_keys) % KEY_BLOCK
    if (
        pad == 0
        or key.device.type != "cpu"
        or mask is None
        or mask.dtype != torch.bool
        or mask.dim() != 4
        or mask.shape[-1] != n_keys
    ):
        pad = 0
    keys, values = [kp.expand(b, -1, -1, -1), key], [vp.expand(b, -1, -1, -1), value]
    if pad and mask is not None:
        keys.append(key.new_zeros(b, kv_heads, pad, key.shape[-1]))
        values.append(value.new_zeros(b, kv_heads, pad, value.shape[-1]))
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    return torch.cat(keys, -2), torch.cat(values, -2), mask


def _own_mask(
    query: torch.Tensor,
    key: torch.Tensor,
    kp: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> torch.Tensor | None:
    """Which own keys each query sees, broadcastable to (Hkv, b, group, L, T); None when not the plain case."""
    b, heads, length, d = query.shape
    kv_heads, n_own, n_prefix = key.shape[1], key.shape[2], kp.shape[2]
    if torch.is_grad_enabled() or dropout or query.dtype not in (torch.float32, torch.float64):
        return None
    if any(v is not None and v is not False and k not in _BENIGN for k, v in kwargs.items()):
        return None  # softcap, sliding_window, s_aux (sinks), position_bias, ...
    if kp.shape[0] != 1 or kp.shape[1] != kv_heads or heads % kv_heads or kp.shape[-1] != d:
        return None
    if mask is None:
        if kwargs.get("is_causal") is False:
            return None
        return torch.ones(length, n_own, dtype=torch.bool, device=query.device).tril(n_own - length)  # (L, T)
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, b):
        return None
    if tuple(mask.shape[2:]) != (length, n_prefix + n_own) or not bool(mask[..., :n_prefix].all()):
        return None
    return mask[..., n_prefix:].permute(1, 0, 2, 3)[:, :, None]  # (1, b', 1, L, T)


def split(
    query: torch.Tensor,
    kp: torch.Tensor,
    vp: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    own_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """softmax(q [kp; k]^T * scale + mask) [vp; v] without concatenating: (b, L, H, dv).

    query (b, H, L, d); kp, vp (1, Hkv, P, d) shared; key, value (b, Hkv, T, d) the rows' own;
    query head h reads key/value head h // (H / Hkv), as ``repeat_kv`` lays them out. The prefix part
    comes normalised with its log-sum-exp (:func:`_prefix_part`) and is merged with the own part
    over a common maximum.
    """
    b, heads, length, d = query.shape
    kv_heads, n_own, dv = key.shape[1], key.shape[2], value.shape[-1]
    group = heads // kv_heads
    m = b * group * length  # query rows per key/value head
    q = query.view(b, kv_heads, group, length, d).transpose(0, 1).reshape(kv_heads, m, d)
    prefix_out, prefix_lse = _prefix_part(q, kp, vp, scale)  # (Hkv, m, dv), (Hkv, m)
    # own keys: (Hkv, b, group*L, T) scores, masked
    own = torch.matmul(q.view(kv_heads, b, group * length, d), key.transpose(0, 1).transpose(-1, -2)).mul_(scale)
    own = own.view(kv_heads, b, group, length, n_own).masked_fill_(~own_mask, float("-inf")).view(kv_heads, m, n_own)
    top = torch.maximum(own.amax(-1), prefix_lse)  # (Hkv, m), finite: the prefix is always seen
    own.sub_(top[..., None]).exp_()
    weight = (prefix_lse - top).exp_()  # the prefix part's share: sum over the prefix of exp(score - top)
    total = own.sum(-1).add_(weight)
    out = torch.matmul(own.view(kv_heads, b, group * length, n_own), value.transpose(0, 1)).view(kv_heads, m, dv)
    out.addcmul_(prefix_out, weight[..., None]).div_(total[..., None])
    return out.view(kv_heads, b, group, length, dv).permute(1, 3, 0, 2, 4).reshape(b, length, heads, dv)


def _prefix_part(
    q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kp^T * scale) vp and the log-sum-exp of the scores per query: q (Hkv, m, d) -> (Hkv, m, dv), (Hkv, m).

    On CPU, PyTorch's fused flash-attention kernel (which returns the log-sum-exp) with all rows'
    queries as one sequence; elsewhere matrix products over chunks of queries.
    """
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if FUSED and flash is not None and q.device.type == "cpu" and q.dtype == torch.float32:
        out, lse = flash(q[None], kp, vp, 0.0, False, scale=scale)[:2]  # (1, Hkv, m, dv), (1, Hkv, m)
        return out[0], lse[0].to(q.dtype)
    kv_heads, m, n_prefix = q.shape[0], q.shape[1], kp.shape[2]
    out = torch.empty(kv_heads, m, vp.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(kv_heads, m, dtype=q.dtype, device=q.device)
    keys_t, values = kp[0].transpose(-1, -2), vp[0]  # (Hkv, d, P), (Hkv, P, dv)
    step = max(1, CHUNK // (kv_heads * n_prefix))
    for start in range(0, m, step):
        rows = slice(start, start + step)
        s = torch.bmm(q[:, rows], keys_t).mul_(scale)  # (Hkv, c, P)
        top = s.amax(-1)
        total = s.sub_(top[..., None]).exp_().sum(-1)
        out[:, rows] = torch.bmm(s, values).div_(total[..., None])
        lse[:, rows] = top + total.log()
    return out, lse
