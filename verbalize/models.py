"""Load a causal LM and its tokenizer from a model argument (None, hub id, local directory, GGUF file).

Everything that needs no torch (the default model's GGUF file, the conversion cache, the tokenizer
alone) lives in :mod:`verbalize.model_files`; its names stay importable from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .model_files import DEFAULT_GGUF as DEFAULT_GGUF
from .model_files import DEFAULT_PACKAGE as DEFAULT_PACKAGE
from .model_files import cache_dir as cache_dir
from .model_files import converted_dir, model_source, quiet
from .model_files import default_gguf as default_gguf
from .model_files import load_tokenizer as load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.float32}


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors directory in the cache; return that directory."""
    target = converted_dir(gguf)
    if (target / "config.json").is_file():
        return target
    try:
        import accelerate  # noqa: F401
        import gguf as _gguf  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"reading {gguf.name} needs the 'gguf' and 'accelerate' packages: pip install 'verbalize[gguf]'"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting %s to safetensors once (about 20 s); cached in %s", gguf.name, target)
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized in memory; drop the GGUF marker so that they can be saved as plain tensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        with quiet():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a concurrent or interrupted conversion never leaves half a model
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
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
    return model, tokenizer


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
# The one place that knows which library quantizes. torchao's int8 dynamic quantization computes one
# activation scale per token (row), so a text's scores never depend on the other rows of its batch
# (torch.ao.quantization.quantize_dynamic uses one scale per tensor, which would break that, and is
# deprecated in favour of torchao). Only the transformer body's linear layers are quantized: the
# output layer runs on one position per text (about 1% of the FLOPs) and is tied to the input
# embedding, so it stays float32.
def quantize(model: torch.nn.Module) -> torch.nn.Module:
    """Quantize the linear layers of a causal LM's transformer body to int8, in place; returns the model.

    Weights get one int8 scale per output channel, activations one scale per token, computed at
    run time (torchao's ``Int8DynamicActivationInt8WeightConfig``). The output layer and the
    embeddings stay float32. The model is for inference only: fine-tune in float32, then quantize.

    Raises
    ------
    ModelLoadError
        If torchao is not installed or no longer provides the API (``pip install 'verbalize[int8]'``).
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(
            "dtype='int8' needs torchao's Int8DynamicActivationInt8WeightConfig: pip install 'verbalize[int8]' "
            f"(or use dtype='float32'); import failed with: {exc}"
        ) from exc
    out = model.get_output_embeddings()  # type: ignore[operator]
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out]
    if not linear:
        raise ModelLoadError(
            f"dtype='int8' quantizes torch.nn.Linear layers and {type(model).__name__} has none outside its output "
            "layer (GPT-2 uses Conv1D); use dtype='float32'"
        )
    config = Int8DynamicActivationInt8WeightConfig()  # per-token activations, per-channel weights, symmetric
    with _quiet_torchao():
        quantize_(model, config, filter_fn=lambda m, _name: isinstance(m, torch.nn.Linear) and m is not out)
    model.eval()
    model.verbalize_int8 = True  # type: ignore[assignment]
    return model


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether :func:`quantize` was applied to this model."""
    return bool(getattr(model, "verbalize_int8", False))


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
