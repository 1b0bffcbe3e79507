"""Load a causal LM and its tokenizer from a model argument (None, hub id, local directory, GGUF file).

Everything that needs no torch (the default model's GGUF file, the conversion cache, the tokenizer
alone, the GGUF conversion) lives in :mod:`verbalize.engine.model_files`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from verbalize.engine.model_files import model_source, quiet
from verbalize.errors import ModelLoadError, check_choice

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.float32}


def load_model(name: str | os.PathLike | None, device: str = "auto", dtype: str = "float32") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode.

    Parameters
    ----------
    name : str, path or None
        None for the embedded default; a ``.gguf`` file; a local directory saved with
        ``save_pretrained``; or a Hugging Face hub id such as ``"gpt2"`` (downloaded by transformers
        when the hub is reachable, or found in the local hub cache).
    device : {"auto", "cpu", "cuda", ...}
        "auto" picks CUDA when available.
    dtype : {"float32", "bfloat16", "float16", "int8"}
        ``"int8"`` loads float32 weights and quantizes them with :func:`quantize`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_choice(dtype, list(DTYPES), "dtype", "load_model")
    source = model_source(name)
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load model {source!r}: it is not a local directory or GGUF file, and the Hugging Face "
            f"hub did not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Pass a hub id such "
            "as 'gpt2' with the hub reachable or cached, a directory saved with save_pretrained, a .gguf file, "
            "or None for the embedded default model"
        ) from exc
    model.to(resolve_device(device)).eval()  # type: ignore[arg-type]
    _realign(model)
    if dtype == "int8":
        model = quantize(model)  # type: ignore[assignment]
    finish_narrow(model, dtype)
    return model, tokenizer


def finish_narrow(model: torch.nn.Module, dtype: str) -> None:
    """What a model verbalize loads or converts to ``dtype`` gets beside its weights' format: bfloat16
    products kept reordered (:func:`prepack`); for bfloat16 and float16, a float32 residual stream
    (:func:`widen_residual`)."""
    if dtype == "bfloat16":
        prepack(model)
    if dtype in ("bfloat16", "float16"):
        widen_residual(model)


WIDE_TOLERANCE = 0.25
"""Largest total variation between the next-token distributions of the widened and the model's own narrow
forward that :func:`widen_residual`'s check accepts. Rounding alone moves them: on the embedded model, at the
check's arbitrary tokens, bfloat16 lies 0.095 from float32, the widened model 0.061, the two 0.117 apart; a model
that breaks moves far more."""


def widen_residual(model: torch.nn.Module) -> bool:
    """Keep a bfloat16 or float16 model's residual stream in float32, its products in its own format; whether it took.

    In a narrow model every layer's output is rounded to 8 bits of mantissa before it is added to the
    residual stream, and the sum is rounded again: after 30 layers small updates are lost. Here the
    input embeddings come out in float32, so the residual additions of the model's own code promote to
    float32, while norms compute in float32 and give their output in the narrow format (what the
    products they feed would round it to), and rotary tables come out narrow as before: the products,
    attention and memory traffic stay bfloat16; the sums of layers do not. Where the stream reaches a
    product without a norm (OLMo's weightless norms), the widened forward raises and products (linear
    layers, GPT-2's ``Conv1D``) then get their input rounded to their weight's format too (only then:
    those hooks cost ~8% of a one-text forward on an AMX Xeon). On the
    embedded model (TREC, 500 texts) the mean |log-odds| change against float32 fell from 0.104 to 0.076
    raw and from 0.122 to 0.075 with contextual calibration (``README.md``, Measured).

    Forward hooks do it (not in ``state_dict``; copied with the model). It is checked on one short
    forward against the model's own narrow one: when the widened forward raises (a model whose code
    mixes formats where this does not look, such as XGLM's positions), moves a next-token distribution
    by more than :data:`WIDE_TOLERANCE`, or computes the very same numbers (BLOOM, whose stream starts at
    a norm), the hooks are removed and the model stays as it was.
    """
    params = list(model.parameters())
    narrow = params[0].dtype if params else torch.float32
    if narrow not in (torch.bfloat16, torch.float16) or getattr(model, "verbalize_wide_residual", False):
        return False
    embed = model.get_input_embeddings()  # type: ignore[operator]
    ids = (torch.arange(1, 9, device=params[0].device) * 7919 % embed.weight.shape[0])[None]  # (1, 8), any tokens
    with torch.inference_mode():
        before = torch.softmax(model(input_ids=ids).logits.float(), dim=-1)  # (1, 8, V)
    handles = [embed.register_forward_hook(_to_float32)]
    norms, products, narrowing = [], [], {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if module is embed or isinstance(module, torch.nn.Embedding) or weight is None or weight.dtype != narrow:
            pass
        elif weight.dim() == 1:  # a norm: computed in float32 on the float32 stream, its output narrow
            norms.append(module.float())  # (what the products it feeds would round it to: rounded once, not each)
            narrowing[module] = module.register_forward_hook(functools.partial(_outputs_as, dtype=narrow))
            handles.append(narrowing[module])
        elif weight.dim() == 2:
            products.append(module)
        if type(module).__name__.endswith("RotaryEmbedding"):
            handles.append(module.register_forward_hook(functools.partial(_outputs_as, dtype=narrow)))
    problem = _check_widened(model, ids, before)
    if problem is not None and problem.startswith(_RAISED):
        # a product fed by the float32 stream itself, not through a norm: its input rounded to its weight's format,
        # as in the narrow model (hooks on every product cost ~8% of a one-text forward, so only where needed)
        handles += [m.register_forward_pre_hook(_input_as_weight) for m in products]
        problem = _check_widened(model, ids, before)
    if problem is not None:
        for handle in handles:
            handle.remove()
        for module in norms:
            module.to(narrow)  # float32 held the narrow values exactly: back as they were
        logger.info("%s: residual stream kept in %s (%s)", type(model).__name__, narrow, problem)
        return False
    model.verbalize_wide_residual = True  # type: ignore[assignment]
    _widen_final_norm(model, ids, narrowing, narrow)
    return True


def _widen_final_norm(
    model: Any, ids: torch.Tensor, narrowing: dict[torch.nn.Module, Any], narrow: torch.dtype
) -> bool:
    """Leave the output of the norm that feeds the output layer in float32; whether it took.

    The body's last hidden state is then float32, and the output layer rounds its input to its weight's
    format itself (a pre-hook), so the model's logits stay bit for bit what they were. What it gives:
    the scorer can compute the label words' logits in float32 from that state (``model_io.wide_words``)
    instead of reading them off logits rounded to 8 bits. The norm is found by its output: the one
    whose (narrowed) output's storage is what the output layer reads; the change is kept only where the
    logits are unchanged and the body's output is float32 (marks ``model.verbalize_wide_hidden``).
    """
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Module) or not narrowing or body is None or body is model:
        return False
    outputs: dict[torch.nn.Module, Any] = {}  # the outputs themselves: kept alive, no two share an address
    entering: list[Any] = []
    spies = [n.register_forward_hook(lambda m, a, out: outputs.__setitem__(m, out)) for n in narrowing]
    spies.append(head.register_forward_pre_hook(lambda m, args: entering.append(args[0] if args else None)))
    try:
        with torch.inference_mode():
            before = model(input_ids=ids).logits
    finally:
        for spy in spies:
            spy.remove()
    read = _storage(entering[-1]) if entering else 0
    final = [n for n, out in outputs.items() if read != 0 and _storage(out) == read]
    if len(final) != 1:
        return False
    (norm,) = final
    narrowing[norm].remove()
    rounding = head.register_forward_pre_hook(_input_as_weight)
    seen: list[Any] = []
    spy = body.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.inference_mode():
            after = model(input_ids=ids).logits
        hidden = seen[-1].last_hidden_state if seen and hasattr(seen[-1], "last_hidden_state") else None
        ok = torch.equal(after, before) and hidden is not None and hidden.dtype == torch.float32
    except (RuntimeError, TypeError, ValueError):
        ok = False
    finally:
        spy.remove()
    if not ok:
        rounding.remove()
        narrowing[norm] = norm.register_forward_hook(functools.partial(_outputs_as, dtype=narrow))
        logger.info("%s: final hidden state kept in %s", type(model).__name__, narrow)
        return False
    model.verbalize_wide_hidden = True
    return True


def _storage(x: Any) -> int:
    """The address of a tensor's storage (a view of it shares it), or 0."""
    if isinstance(x, tuple) and x:
        x = x[0]
    return x.untyped_storage().data_ptr() if torch.is_tensor(x) else 0


_RAISED = "raised "


def _check_widened(model: Any, ids: torch.Tensor, before: torch.Tensor) -> str | None:
    """Why the widened forward on ``ids`` is not taken (its output against the narrow one, ``before``), or None."""
    try:
        with torch.inference_mode():
            after = torch.softmax(model(input_ids=ids).logits.float(), dim=-1)
    except (RuntimeError, TypeError, ValueError) as exc:
        return f"{_RAISED}{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    change = float(0.5 * (after - before).abs().sum(-1).max())  # total variation, the worst position
    if change > WIDE_TOLERANCE:
        return f"next-token distributions moved by {change:.3f} (TV)"
    if torch.equal(after, before):  # the stream is narrowed again where it starts (BLOOM's embedding norm)
        return "the widened forward computes the same numbers: nothing to gain"
    return None


def _to_float32(module: torch.nn.Module, args: Any, output: Any) -> Any:
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


def _input_as_weight(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x, dtype = args[0] if args else None, module.weight.dtype
    if torch.is_tensor(x) and isinstance(dtype, torch.dtype) and x.is_floating_point() and x.dtype != dtype:
        return (x.to(dtype), *args[1:])
    return None


def _outputs_as(module: torch.nn.Module, args: Any, output: Any, dtype: torch.dtype) -> Any:
    if isinstance(output, tuple):
        return tuple(t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t for t in output)
    return output.to(dtype) if torch.is_tensor(output) and output.is_floating_point() else output


class PrepackedLinear(torch.nn.Linear):
    """A bfloat16 CPU linear layer whose weight oneDNN also holds in its own blocked layout, reordered once.

    ``F.linear`` on bfloat16 reorders the weight into the AMX/AVX-512 layout on every call: reading and
    writing every weight once per forward, whatever the batch. Kept reordered (:func:`prepack`), the
    products give the same numbers (bit for bit: same kernel, same blocking); on an Intel Xeon with AMX
    (bf16, int8), AVX-512 BF16 and VNNI, whole forwards took ~9% less time at ~1000 tokens and ~14% less
    at one text (``README.md``, Measured). The reordered copy is used only while it matches the
    weight (same storage, no in-place change since), without autograd, for bfloat16 CPU inputs; anything
    else (training, a copy of the model, weights edited or moved) runs ``F.linear`` as before. The copy
    lives outside the module (not in ``state_dict``, not deep-copied) and costs one more copy of the weights.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry = _PREPACKED.get(self)
        w = self.weight
        if (
            entry is None
            or x.dtype != torch.bfloat16
            or x.device.type != "cpu"
            or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
            or entry[1] != (w.data_ptr(), w._version)
        ):
            return torch.nn.functional.linear(x, w, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, entry[0], self.bias, "none", [], "")


# module -> (its weight reordered by oneDNN, the (storage, version) of the weight it was made from)
_PREPACKED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[torch.Tensor, tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)


def prepack_available() -> bool:
    """Whether this torch has oneDNN's bfloat16 linear with reordered weights and the CPU runs it natively."""
    ops = torch.ops.mkldnn
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and ops._is_mkldnn_bf16_supported()
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


@torch.no_grad()
def prepack(model: torch.nn.Module) -> int:
    """Make ``model``'s bfloat16 CPU ``nn.Linear`` layers :class:`PrepackedLinear` (in place); how many.

    Only plain ``nn.Linear`` layers (not subclasses such as quantized or adapter layers) are changed, and
    only where :func:`prepack_available`. Used for the models verbalize loads in bfloat16 itself.
    """
    if not prepack_available():
        return 0
    n = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module) is not torch.nn.Linear or w is None or w.dtype != torch.bfloat16 or w.device.type != "cpu":
            continue
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1024)
        except RuntimeError as exc:  # a shape oneDNN does not take: the layer stays as it is
            logger.debug("no prepacked weight for %s: %s", tuple(w.shape), exc)
            continue
        module.__class__ = PrepackedLinear
        _PREPACKED[module] = (packed, (w.data_ptr(), w._version))
        n += 1
    return n


@torch.no_grad()
def _realign(model: torch.nn.Module) -> None:
    """Give every weight its own, aligned memory.

    safetensors maps the file, so weights can start at any byte offset; CPU matrix kernels then take
    other code paths and round differently (~1e-6). Copied into fresh allocations, a reloaded model
    computes exactly what the saved one did.
    """
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "cpu" and t.data_ptr() % 64:
            t.data = t.data.clone()


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# -- int8 ---------------------------------------------------------------------------------------
# The one place that knows how int8 runs. Every quantized layer computes one activation scale per
# token (row) and one weight scale per output channel, symmetric, and accumulates in int32, so a
# layer's output rows never depend on the other rows of its batch (torch.ao.quantization.quantize_dynamic
# uses one scale per tensor, which breaks that and flipped 28% of SST-2 decisions; it is also
# deprecated). End to end, float32's last-bit differences between batch shapes can still move a
# rounded activation: see float_activations and the README's int8 figures. Two back ends:
# - CPU: oneDNN's int8 matrix product (torch.ops.onednn.qlinear_pointwise, the kernel torch.compile's
#   x86 int8 lowering calls), eager, no compilation. torchao's eager path runs torch._int_mm, which
#   on CPUs without AVX-512 VNNI is a reference loop (3 GFLOP/s against fp32's 130 measured here).
#   The entries of a row above OUTLIER_RMS x its RMS skip int8 (split_outliers; LLM.int8's
#   decomposition, decided per row): without that, SmolLM2's first token and its few dominant feature
#   channels left the rest of their rows a handful of int8 steps, and confident TREC decisions moved.
# - elsewhere (CUDA), or where a torch build lacks the oneDNN ops: torchao's
#   Int8DynamicActivationInt8WeightConfig, per-token activations without the outlier split (its layers
#   take no such hook; doing it there means our own CUDA layer on torch._int_mm, which no machine here
#   can test), so it keeps the old precision.
# Only the transformer body's linear layers are quantized: the output layer runs on one position per
# text (about 1% of the FLOPs) and is tied to the input embedding, so it stays float32.
class Int8Linear(torch.nn.Module):
    """``torch.nn.Linear`` for inference on oneDNN's u8 x s8 -> int32 product: int8 activations (one scale
    per token, computed at run time) times weights held as two int8 planes (one scale per output
    channel each: the second plane rounds the first one's rounding error); a row's outlier entries
    (:func:`split_outliers`) go through a float product instead. Built by :func:`quantize`.

    Why two planes: one int8 plane per weight row (a step of 1/127 of the row's largest weight) moved
    accuracy on the embedded model by up to 2.4 points with float activations, the weights alone; with the
    second plane a weight is off by at most 1/64516 of its row's largest weight, not 1/254
    (``eval/bench_int8.py accuracy``, README "Number formats").
    Both planes are one product with twice the outputs, summed after it: an int8 product is a small
    part of an int8 layer's time beside the passes over its input.
    """

    qweight_t: torch.Tensor  # (in, 2 out): stored by input column, so an outlier's weights are one contiguous row
    w_scale: torch.Tensor
    w_zero: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        first, s1 = _round_rows(w)
        second, s2 = _round_rows(w - first.float() * s1[:, None])
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.share_input = True  # see _rounded_input; quantize turns it off where its check fails
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float(), persistent=False)
        # (2 out, in): plane 1's rows, then plane 2's
        self.hold(torch.cat([first, second]), torch.cat([s1, s2]))

    def hold(self, qweight: torch.Tensor, w_scale: torch.Tensor) -> None:
        """Take these planes ``(2 out, in)`` and their scales ``(2 out,)``, and pack them for oneDNN."""
        device = qweight.device
        self.register_buffer("qweight_t", qweight.T.contiguous(), persistent=False)
        self.register_buffer("w_scale", w_scale, persistent=False)
        self.register_buffer("w_zero", torch.zeros(len(w_scale), dtype=torch.int64, device=device), persistent=False)
        self.packed = torch.ops.onednn.qlinear_prepack(qweight.contiguous(), None)

    @property
    def qweight(self) -> torch.Tensor:
        """The two int8 planes, ``(2 out, in)``: plane 1's rows, then plane 2's (a view)."""
        return self.qweight_t.T

    def dequantized(self) -> torch.Tensor:
        """The weights the int8 planes hold, ``(out, in)`` float32."""
        w = self.qweight.float().mul_(self.w_scale[:, None])
        return w[: self.out_features].add_(w[self.out_features :])

    def columns(self, cols: torch.Tensor) -> torch.Tensor:
        """The dequantized weights of these input columns, ``(len(cols), out)``, contiguous."""
        w = self.qweight_t[cols].float().mul_(self.w_scale)  # (len(cols), 2 out)
        return w[:, : self.out_features].add_(w[:, self.out_features :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(_FLOAT_ACTIVATIONS, "on", False):
            return torch.nn.functional.linear(x, self.dequantized(), self.bias)
        shape = x.shape
        qx, scale, outliers = _rounded_input(x) if self.share_input else _round_input(x)
        y = _int8_product(qx, self.packed, self.w_scale, self.w_zero)  # (rows, 2 out): the two planes
        y = torch.add(y[:, : self.out_features], y[:, self.out_features :]).mul_(scale)
        if outliers is not None:
            y.index_add_(0, outliers.rows, outliers.product(self.columns))
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (oneDNN, two weight planes)"


def timing_layers(shapes: list[tuple[int, int]]) -> list[Int8Linear]:
    """Int8 layers of these ``(in, out)`` shapes (weights of ``torch.nn.Linear``'s default init), for timing.

    Each rounds its own input: a timing loop gives the layers of one width one tensor, whose rounding they
    would otherwise share (:func:`_rounded_input`), and the loop would time little more than the products.
    """
    layers = [Int8Linear(torch.nn.Linear(k, n, bias=False)) for k, n in shapes]
    for layer in layers:
        layer.share_input = False
    return layers


RoundedInput = tuple[torch.Tensor, torch.Tensor, "Outliers | None"]


def _round_input(x: torch.Tensor) -> RoundedInput:
    """An int8 layer's input ``(..., in)`` as ``(rounded, scale, outliers)``: its ``n`` rows' uint8 rounding
    (zero point 128, outliers set to the zero point), the per-row scale ``(n, 1)`` and the outliers that skip
    int8."""
    rows = x.reshape(-1, x.shape[-1]).float()
    outliers, amax = split_outliers(rows, rows.abs())
    scale = amax.clamp_(min=1e-12).div_(127)  # (rows, 1): per token, from the entries that are not outliers
    # round(x / scale) is in [-127, 127]: shifted by 128 into uint8, the zero point oneDNN takes back out
    qx = torch.round(rows / scale)
    if outliers is not None:
        qx.index_put_(outliers.entries, torch.zeros((), dtype=qx.dtype))
    return qx.add_(128).to(torch.uint8), scale, outliers


_LAST_INPUT = threading.local()  # per thread: the service scores in one thread while another loads


def _rounded_input(x: torch.Tensor) -> RoundedInput:
    """:func:`_round_input`, computed once for layers that read the same tensor.

    A transformer block feeds one normalized tensor to its query, key and value projections, and
    another to its gate and up projections: rounding it once instead of per layer saves three of a
    block's seven passes of outlier search and rounding (~25% of int8 scoring time on the embedded
    model). The last input is kept per thread by a weak reference, with its rounding (a quarter of its
    size, kept until the thread's next int8 layer reads another tensor) and its version counter where
    it has one (inference tensors have none): :func:`quantize` checks on each model that sharing leaves
    its output bit for bit equal, and turns it off where it does not.
    """
    try:
        version: int | None = x._version
    except RuntimeError:  # an inference tensor: no version counter
        version = None
    last = getattr(_LAST_INPUT, "value", None)
    if last is not None and last[0]() is x and last[1] == version:
        result: RoundedInput = last[2]
        return result
    result = _round_input(x)
    _LAST_INPUT.value = (weakref.ref(x), version, result)
    return result


OUTLIER_RMS = 3.0
"""An int8 layer's input entry above this many times its row's root mean square skips int8 (:func:`split_outliers`).

3, not LLM.int8's 6: with exact weights (two planes), the activations' rounding alone moved the embedded
model's next-token scores by 0.115 (mean over texts of the largest label change, 3,000 test scores of
SST-2, AG News and TREC) at 6 and by 0.066 at 3, for ~10% of int8 scoring time (a handful more entries
per row in the float product)."""


@dataclass(frozen=True)
class Outliers:
    """The entries of an int8 layer's input that skip int8: (row, column) pairs in row-major order, their
    values, and what :meth:`product` needs (computed once, then shared by the layers that read the input)."""

    entries: tuple[torch.Tensor, torch.Tensor]  # their rows and columns in the input
    rows: torch.Tensor  # the rows that have outliers, ascending
    values: torch.Tensor  # the entries' values
    columns: torch.Tensor  # the input columns that have any, ascending
    bag: torch.Tensor  # each entry's index into ``columns``
    offsets: torch.Tensor  # where each row's entries start

    @classmethod
    def of(cls, x: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> Outliers:
        rows, counts = torch.unique_consecutive(r, return_counts=True)
        columns, bag = torch.unique(c, return_inverse=True)  # the weights' columns that are needed, once
        offsets = torch.cumsum(counts, 0).sub_(counts)
        return cls((r, c), rows, x[r, c], columns, bag, offsets)

    def product(self, columns: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``(len(rows), out)``: each row's outliers times the dequantized weights of their columns, in float32.

        One bag per row (``embedding_bag``): a row's sum runs over its own outliers, in column order,
        whatever the other rows hold, so the result is the same in any batch.
        """
        w = columns(self.columns)  # (len(columns), out): the dequantized weights of those columns
        return torch.nn.functional.embedding_bag(self.bag, w, self.offsets, mode="sum", per_sample_weights=self.values)


def split_outliers(x: torch.Tensor, absx: torch.Tensor) -> tuple[Outliers | None, torch.Tensor]:
    """The entries of ``x`` (rows, in) that skip int8, and each row's largest entry left, ``(rows, 1)``.

    An entry is an outlier when ``|x| > OUTLIER_RMS x`` its row's root mean square (the row's own, outliers
    included): which entries are outliers depends on the row alone. Such rows are SmolLM2's first token
    ("massive activations" up to 2.5e4 in a few channels, Sun et al. 2024) and the few feature channels
    that dominate most normalized rows (LLM.int8's outlier features, Dettmers et al. 2022); with one
    int8 step of 1/127 of the row's largest entry, the other entries of such a row would round to a
    few steps or to zero. The outliers go through :meth:`Outliers.product`; the rest is rounded to int8
    with a scale from the largest entry left. Overwrites ``absx``; None for no outliers.
    """
    threshold = torch.linalg.vector_norm(x, dim=1, keepdim=True).mul_(OUTLIER_RMS / math.sqrt(x.shape[1]))
    mask = absx > threshold
    amax = absx.masked_fill_(mask, 0).amax(dim=1, keepdim=True)
    r, c = mask.nonzero().unbind(1)
    if not len(r):
        return None, amax
    return Outliers.of(x, r, c), amax


def _round_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (out, in) rounded to int8 with one symmetric scale per row: ``(int8 values, scales)``."""
    top = _weight_range()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / top  # (out,)
    return torch.round(w / scale[:, None]).clamp(-top, top).to(torch.int8), scale


def _int8_product(qx: torch.Tensor, packed: Any, w_scale: torch.Tensor, w_zero: torch.Tensor) -> torch.Tensor:
    """oneDNN's u8 x s8 -> float32 product of rounded activations (zero point 128, scale 1) and packed weights."""
    return torch.ops.onednn.qlinear_pointwise(
        qx, 1.0, 128, packed, w_scale, w_zero, None, 1.0, 0, torch.float32, "none", [], ""
    )


@functools.cache
def _weight_range() -> int:
    """127, or 63 (7-bit weights) where oneDNN's int8 product would saturate.

    Without AVX-512 VNNI, x86 multiplies u8 x s8 pairs into int16 sums (vpmaddubsw), which saturate
    at 32767: 2 x 255 x 127 does not fit and the product comes out wrong by up to 1e5 (measured on
    an AVX2 CPU); 2 x 255 x 63 fits, so there weights keep 7 bits. The probe is the worst case.
    """
    k = 64
    qw = torch.full((2, k), 127, dtype=torch.int8)
    qx = torch.full((1, k), 255, dtype=torch.uint8)  # 127 after the zero point 128
    y = torch.ops.onednn.qlinear_pointwise(
        qx,
        1.0,
        128,
        torch.ops.onednn.qlinear_prepack(qw, None),
        torch.ones(2),
        torch.zeros(2, dtype=torch.int64),
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )
    return 127 if float(y[0, 0]) == k * 127 * 127 else 63


_FLOAT_ACTIVATIONS = threading.local()  # per thread: the service scores in one thread while another loads


@contextlib.contextmanager
def float_activations() -> Iterator[None]:
    """Within this block :class:`Int8Linear` layers keep their int8 weights but take float32 activations.

    Scoring's exactness probe (:func:`verbalize.engine.model_io.choose`) runs in it. It compares padded,
    cached rows with the model's own forward; with int8 activations, the last-bit differences of
    float32 attention between two shapes can move a value across an int8 step (a step is 1/127 of a
    token's largest activation, which reaches 2.5e4 on SmolLM2's first token), and the probe would
    measure that instead of the path. Each layer's activation rounding is per row, so exact paths
    stay exact with it.
    """
    before = getattr(_FLOAT_ACTIVATIONS, "on", False)
    _FLOAT_ACTIVATIONS.on = True
    try:
        yield
    finally:
        _FLOAT_ACTIVATIONS.on = before


@functools.cache
def _onednn_int8() -> bool:
    """Whether this torch build runs :class:`Int8Linear` and gets the right numbers (checked once per process)."""
    try:
        gen = torch.Generator().manual_seed(0)  # leaves the caller's random state alone
        lin = torch.nn.utils.skip_init(torch.nn.Linear, 16, 8)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(8, 16, generator=gen))
            lin.bias.copy_(torch.randn(8, generator=gen))
        x = torch.randn(3, 16, generator=gen)
        with torch.inference_mode():
            return bool(torch.allclose(Int8Linear(lin)(x), lin(x), atol=0.05 * float(lin(x).abs().max())))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def int8_available(model: torch.nn.Module) -> bool:
    """Whether :func:`quantize` would run this model on :class:`Int8Linear` (CPU, oneDNN, linear layers)."""
    out = model.get_output_embeddings()  # type: ignore[operator]
    linear = any(isinstance(m, torch.nn.Linear) and m is not out for m in model.modules())
    return linear and next(model.parameters()).device.type == "cpu" and _onednn_int8()


def quantize(model: torch.nn.Module) -> torch.nn.Module:
    """Quantize the linear layers of a causal LM's transformer body to int8, in place; returns the model.

    Weights get one int8 scale per output channel (on CPU two int8 planes, the second for the first's
    rounding error), activations one scale per token, computed at run time (on CPU without each token's
    outlier entries, which skip int8): :class:`Int8Linear` on CPU, torchao's
    ``Int8DynamicActivationInt8WeightConfig`` elsewhere. The output layer and the embeddings stay float32.
    The model is for inference only: fine-tune in float32, then quantize.

    Raises
    ------
    ModelLoadError
        If the model has no linear layers to quantize, or off CPU without torchao
        (``pip install 'verbalize[int8]'``).
    """
    out = model.get_output_embeddings()  # type: ignore[operator]
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out}
    if not linear:
        raise ModelLoadError(
            f"dtype='int8' quantizes torch.nn.Linear layers and {type(model).__name__} has none outside its output "
            "layer (GPT-2 uses Conv1D); use dtype='float32'"
        )
    model.eval()
    if next(model.parameters()).device.type == "cpu" and _onednn_int8():
        layers = []
        for name, m in linear.items():
            parent, _, child = name.rpartition(".")
            layers.append(Int8Linear(m))
            setattr(model.get_submodule(parent), child, layers[-1])
        _check_shared_input(model, layers)
    else:
        _torchao_int8(model, out)
    model.verbalize_int8 = True  # type: ignore[assignment]
    return model


def _check_shared_input(model: torch.nn.Module, layers: list[Int8Linear]) -> None:
    """Let int8 layers share a rounded input (:func:`_rounded_input`) only if that leaves this model's output
    bit for bit equal: one forward of 16 tokens with sharing, one without. A model whose code wrote into a
    tensor between two of its layers that read it would differ (none is known; the check keeps it so)."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    ids = torch.linspace(1, vocab - 1, 16).long().reshape(2, 8)
    try:
        with torch.inference_mode():
            shared = model(input_ids=ids).logits
            for m in layers:
                m.share_input = False
            alone = model(input_ids=ids).logits
        same = bool(torch.equal(shared, alone))
    except Exception as exc:  # noqa: BLE001 - any failure means: do not share
        logger.debug("int8 input sharing left off: the check's forward raised %r", exc)
        same = False
    _LAST_INPUT.value = None
    if not same:
        logger.info("int8 layers round their inputs each (sharing changed %s's output)", type(model).__name__)
    for m in layers:
        m.share_input = same


def _torchao_int8(model: torch.nn.Module, out: Any) -> None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(
            "dtype='int8' off CPU (or with a torch built without oneDNN) needs torchao's "
            "Int8DynamicActivationInt8WeightConfig: pip install 'verbalize[int8]' (or use dtype='float32'); "
            f"import failed with: {exc}"
        ) from exc
    config = Int8DynamicActivationInt8WeightConfig()  # per-token activations, per-channel weights, symmetric
    with _quiet_torchao():
        quantize_(model, config, filter_fn=lambda m, _name: isinstance(m, torch.nn.Linear) and m is not out)


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether :func:`quantize` was applied to this model."""
    return bool(getattr(model, "verbalize_int8", False))


INT8_TENSORS = ("qweight", "w_scale", "bias")


def int8_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The int8 layers' weights, scales and biases by ``layer.name`` (they are not in ``state_dict``), on CPU.

    Raises
    ------
    ModelLoadError
        For a model quantized by torchao (off CPU), whose layers this does not know.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    if is_quantized(model) and not layers:
        raise ModelLoadError(
            f"this {type(model).__name__} was quantized to int8 by torchao (off CPU), whose layers cannot be copied "
            "out: pickle a classifier of dtype='float32', or load the model again with dtype='int8' where needed"
        )
    return {
        f"{n}.{k}": getattr(m, k).cpu() for n, m in layers.items() for k in INT8_TENSORS if getattr(m, k) is not None
    }


def load_int8_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put :func:`int8_tensors` of a model into the int8 layers of another (quantized from the same config)."""
    for n, m in model.named_modules():
        if isinstance(m, Int8Linear):
            device = m.qweight_t.device
            qweight, w_scale = tensors[f"{n}.qweight"].to(device), tensors[f"{n}.w_scale"].to(device)
            if len(qweight) == m.out_features:  # one plane (saved before the second): its second plane is zero
                qweight = torch.cat([qweight, torch.zeros_like(qweight)])
                w_scale = torch.cat([w_scale, torch.ones_like(w_scale)])
            m.hold(qweight, w_scale)
            m.bias = tensors[f"{n}.bias"].to(device) if f"{n}.bias" in tensors else None


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
