"""``dtype="auto"``: the number format of a model's weights, chosen by measurement on this machine.

At the first load of a model on a machine, :func:`measure_rates` times the matrix products of one of
the model's own transformer blocks (its linear layers' shapes, on :data:`ROWS` tokens) in float32,
bfloat16 and int8 (int8 where the model has linear layers to quantize and this torch runs
:class:`~verbalize.engine.models.Int8Linear`, on CPU), interleaved and best of :data:`ROUNDS`. The
fastest of :data:`CANDIDATES` (float32, bfloat16: int8 is shown, never chosen) whose scores pass the
Scorer's exactness probe on the model is taken (:func:`choose`); a format with fewer bits must beat a
more precise one by :data:`MARGIN` per step of precision, so a near tie keeps the more precise format.
float32 is the fallback. Nothing is guessed from the CPU's name: an AVX2-only CPU, where bfloat16 is
emulated, measures it slower and keeps float32; a CPU with AMX or AVX-512 BF16 measures bfloat16
several times faster.

The choice, its rates and the reasons the other formats were not taken are logged (INFO), kept on the
model (:func:`choice_of`) and recorded per model, machine and torch version (:mod:`verbalize.engine.machine`),
so the next load of the same model reads the record and measures nothing. To force a format, pass it
(``dtype="float32"``, ``--dtype float32``), or set ``VERBALIZE_DTYPE=float32`` in the environment:
every ``dtype="auto"`` of the process then means that format.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch

from verbalize.engine import machine
from verbalize.engine.model_files import model_source
from verbalize.engine.models import DTYPES, Int8Linear, finish_narrow, int8_available, quantize, timing_layers
from verbalize.errors import ModelLoadError, check_choice

logger = logging.getLogger(__name__)

AUTO = "auto"
ENV = "VERBALIZE_DTYPE"
PRECISION = ("float32", "bfloat16", "int8")  # most precise first
CANDIDATES = ("float32", "bfloat16")
"""The formats ``dtype="auto"`` may choose. int8 is measured and shown but never chosen. Its accuracy holds on
the embedded model (two weight planes: within 0.8 points of float32 on SST-2, AG News and TREC, raw and
calibrated; ``eval/bench_int8.py accuracy``), but its speed was measured on one CPU type only, an AMX one where
it is slower than float32 (this probe 0.62x, whole scoring 0.93x; bfloat16 4x): until it is measured faster
somewhere, a user names ``dtype="int8"`` to use it."""
NOT_CANDIDATE = "measured only: auto never chooses int8 (its speed is measured on one CPU type only; name dtype='int8')"
MARGIN = 1.15
ROWS = 256
ROUNDS = 5

Load = Callable[[Any, str, str], tuple[Any, Any]]
Exact = Callable[[Any, Any], object]


@dataclass(frozen=True)
class DtypeChoice:
    """What ``dtype="auto"`` chose for a model on this machine, and why.

    Attributes
    ----------
    dtype : str
        The format the model runs in.
    rates : dict of str to float
        GFLOP/s of one block's matrix products in each measured format (float32 always).
    refused : dict of str to str
        Why each other format was not taken.
    machine : str
        The CPU's name and features (or the GPU's name) the rates were measured on.
    recorded : bool
        Read from the record of an earlier measurement (True) or measured at this load.
    """

    dtype: str
    rates: dict[str, float]
    refused: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    recorded: bool = False

    def speedups(self) -> dict[str, float]:
        """Each measured format's rate as a multiple of float32's."""
        base = self.rates.get("float32") or 1.0
        return {k: v / base for k, v in self.rates.items()}

    def summary(self) -> str:
        """One line: the choice, each format's measured rate, and the machine."""
        rates = ", ".join(f"{k} {v:.0f} GFLOP/s ({self.speedups()[k]:.2f}x)" for k, v in self.rates.items())
        how = "recorded earlier" if self.recorded else "measured now"
        return f"dtype auto -> {self.dtype} ({how}; {rates}; on {self.machine})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def forced() -> str | None:
    """The format ``VERBALIZE_DTYPE`` forces on every ``dtype="auto"``, or None.

    Raises
    ------
    ParameterError
        When the variable names no known format.
    """
    value = os.environ.get(ENV, "").strip()
    if not value or value == AUTO:
        return None
    check_choice(value, list(DTYPES), ENV, "the environment")
    return value


def choice_of(model: Any) -> DtypeChoice | None:
    """The :class:`DtypeChoice` that loaded ``model``, or None (a format was named, or a model object given)."""
    return getattr(model, "verbalize_dtype_choice", None)


def product_shapes(model: Any) -> list[tuple[int, int]]:
    """(in, out) of the matrix products of the model's first transformer block (linear and GPT-2's Conv1D)."""
    block: Any = model
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m):
            block = m[0]
            break
    shapes = [(m.in_features, m.out_features) for m in block.modules() if isinstance(m, torch.nn.Linear | Int8Linear)]
    shapes += [
        (int(m.weight.shape[0]), int(m.weight.shape[1])) for m in block.modules() if type(m).__name__ == "Conv1D"
    ]
    return shapes or [(model.config.hidden_size, model.config.hidden_size)]


def measure_rates(model: torch.nn.Module, rows: int = ROWS, rounds: int = ROUNDS) -> dict[str, float]:
    """GFLOP/s of one block's products of ``model`` on ``rows`` tokens in each format it may run in.

    Formats run interleaved, ``rounds`` times each, and the best round counts (a shared machine's speed
    drifts). On CPU they run on one thread, timed by its CPU time (see :func:`_one_thread`). Weights are
    random: speed does not depend on their values. Takes ~0.3 s on a 135M model.
    """
    device = next(model.parameters()).device
    shapes = product_shapes(model)
    flops = 2.0 * rows * sum(k * n for k, n in shapes)
    gen = torch.Generator().manual_seed(0)  # leaves the caller's random state alone
    runs: dict[str, list[Callable[[], object]]] = {}
    for name in ("float32", "bfloat16"):
        if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        dt = DTYPES[name]
        xs = {k: torch.randn(rows, k, generator=gen).to(device, dt) for k, _ in shapes}
        ws = [torch.randn(n, k, generator=gen).to(device, dt) for k, n in shapes]
        runs[name] = [partial(torch.nn.functional.linear, xs[k], w) for (k, _), w in zip(shapes, ws, strict=True)]
    if device.type == "cpu" and int8_available(model):
        xs = {k: torch.randn(rows, k, generator=gen) for k, _ in shapes}
        layers = timing_layers(shapes)
        runs["int8"] = [partial(layer, xs[k]) for (k, _), layer in zip(shapes, layers, strict=True)]
    best = dict.fromkeys(runs, float("inf"))
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    with torch.inference_mode(), _one_thread(device.type == "cpu"):
        for products in runs.values():  # warm-up: first calls create the kernels
            for product in products:
                product()
        for _ in range(rounds):
            for name, products in runs.items():
                _sync(device)
                start = clock()
                for product in products:
                    product()
                _sync(device)
                best[name] = min(best[name], clock() - start)
    return {name: flops / max(seconds, 1e-9) / 1e9 for name, seconds in best.items()}


@contextlib.contextmanager
def _one_thread(on: bool) -> Iterator[None]:
    """One torch thread, timed by its own CPU time: other processes on a shared CPU then barely move the
    rates (wall time with two threads on two busy cores moved them by 3x); the ratios between formats are
    those of one core."""
    before = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ranking(rates: dict[str, float], candidates: tuple[str, ...] = CANDIDATES) -> list[str]:
    """The ``candidates`` of ``rates`` to try, best first: by rate, each step of lost precision discounted by
    :data:`MARGIN`, and only those ahead of float32 (which ends the list)."""
    score = {f: rates[f] / MARGIN ** PRECISION.index(f) for f in rates if f in candidates}
    ahead = sorted((f for f in score if f != "float32" and score[f] > score["float32"]), key=lambda f: -score[f])
    return [*ahead, "float32"]


def convert(model: Any, dtype: str) -> Any:
    """``model`` (float32) in ``dtype``, converted in place."""
    if dtype == "int8":
        return quantize(model)
    model = model.to(DTYPES[dtype])
    finish_narrow(model, dtype)
    return model


def choose(
    model: Any,
    tokenizer: Any,
    exact: Exact | None = None,
    rates: dict[str, float] | None = None,
    reload: Callable[[], Any] | None = None,
    candidates: tuple[str, ...] = CANDIDATES,
) -> tuple[Any, DtypeChoice]:
    """Convert a float32 ``model`` to the fastest format that passes ``exact``; return it and the choice.

    Parameters
    ----------
    model : causal LM in float32
    tokenizer : its tokenizer, passed to ``exact``
    exact : callable, optional
        ``exact(model, tokenizer)`` raises :class:`ModelLoadError` when the model's scores in its
        current format are not exact (the Scorer's probe). None: not checked here.
    rates : dict of str to float, optional
        Measured rates by format (default: :func:`measure_rates` on ``model``).
    reload : callable, optional
        Gives the float32 model again after a format was refused (conversions are in place); default:
        a copy kept before converting.
    candidates : tuple of str
        The formats that may be chosen (default :data:`CANDIDATES`); the others are measured and shown only.
    """
    rates = measure_rates(model) if rates is None else dict(rates)
    order = ranking(rates, candidates)
    refused = {f: "not available for this model here" for f in PRECISION if f not in rates}
    refused |= {f: NOT_CANDIDATE for f in rates if f not in candidates}
    if reload is None and order[0] != "float32":
        kept = copy.deepcopy(model)
        reload = lambda: copy.deepcopy(kept)  # noqa: E731
    chosen = "float32"
    for dtype in order[:-1]:
        try:
            model = convert(model, dtype)
            if exact is not None:
                exact(model, tokenizer)
            chosen = dtype
            break
        except ModelLoadError as exc:
            refused[dtype] = f"not exact on this model: {exc}"
            logger.info("dtype auto: %s refused: %s", dtype, exc)
            assert reload is not None
            model = reload()
    for dtype in rates:
        if dtype != chosen and dtype not in refused:
            ratio = rates[dtype] / rates[chosen]
            refused[dtype] = f"{ratio:.2f}x the rate of {chosen}" + (" (not faster by the margin)" if ratio > 1 else "")
    return model, DtypeChoice(chosen, rates, refused, machine.machine_id(_device_id(model)))


def load_auto(name: Any, device: str, load: Load, exact: Exact | None = None) -> tuple[Any, Any]:
    """Load ``name`` in the format ``dtype="auto"`` chooses (the record of an earlier measurement, or measure).

    ``load(name, device, dtype)`` loads a named format (:func:`verbalize.engine.models.load_model`).
    """
    dtype = forced()
    if dtype is not None:
        return load(name, device, dtype)
    config = machine.source_config(model_source(name))
    key = machine.record_key(config, _device_id(device)) if config is not None else None
    record = machine.read_record(key) if key else None
    if record is not None and record["dtype"] in CANDIDATES:
        model, tokenizer = load(name, device, record["dtype"])
        try:
            if exact is not None:
                exact(model, tokenizer)
            fields = {k: record[k] for k in ("dtype", "rates", "refused", "machine") if k in record}
            return _keep(model, DtypeChoice(**fields, recorded=True), tokenizer)
        except ModelLoadError as exc:
            logger.info("dtype auto: the recorded %s is not exact for %s (%s); measuring", record["dtype"], name, exc)
    model, tokenizer = load(name, device, "float32")
    model, choice = choose(model, tokenizer, exact, reload=lambda: load(name, device, "float32")[0])
    if key:
        machine.write_record(key, choice.to_dict() | {"measured_at": datetime.datetime.now().isoformat()})
    return _keep(model, choice, tokenizer)


def _keep(model: Any, choice: DtypeChoice, tokenizer: Any) -> tuple[Any, Any]:
    model.verbalize_dtype_choice = choice
    logger.info("%s: %s", getattr(model.config, "model_type", type(model).__name__), choice.summary())
    return model, tokenizer


def _device_id(where: Any) -> str:
    """ "cpu", or the accelerator's name, for a model or a device argument."""
    if isinstance(where, torch.nn.Module):
        device = next(where.parameters()).device
    elif str(where) == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(where)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type
