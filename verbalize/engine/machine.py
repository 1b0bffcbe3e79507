"""This machine as ``dtype="auto"`` sees it, and the choices measured on it; imports no torch.

``dtype="auto"`` (:mod:`verbalize.engine.formats`) measures which number format runs a model fastest
here and records the answer in the user's cache directory (``$VERBALIZE_CACHE`` or
``~/.cache/verbalize``, file :data:`RECORDS`), so that the next load of the same model on the same
machine reads it instead of measuring again. A record is keyed by the model's architecture (its
``config.json``, names and dtype left out), the machine (CPU model name and instruction-set features,
with any cap on the kernels' instruction sets set in the environment, or the GPU's name) and the torch
version: any of them changing means a new measurement. Nothing here
guesses a format from these names; they only tell one measurement from another.
``verbalize check --model ...`` reads the record without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from verbalize.atomic import atomic_path
from verbalize.engine.model_files import cache_dir

logger = logging.getLogger(__name__)

RECORDS = "dtype-choices.json"
PROBE_VERSION = 3  # bump when the measurement changes: older records are then measured again (2: CPU time, one
# thread; 3: int8 layers with two weight planes and outliers above 3x the row RMS)
# The instruction-set features that decide how fast float32, bfloat16 and int8 products run (shown, and
# part of the record key; the choice itself is measured)
FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "asimddp",
    "bf16",
    "i8mm",
    "sve",
)
# Environment variables that cap the instruction sets torch's kernels use (oneDNN, ATen's own, MKL): a machine
# under such a cap runs like another CPU, so they are part of its description and of the record key
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
_IGNORED_CONFIG = ("_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")


def cpu_features() -> tuple[str, ...]:
    """The features of :data:`FEATURES` this CPU states (``/proc/cpuinfo``; empty where it cannot be read)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
                    break
    except OSError:
        pass
    return tuple(f for f in FEATURES if f in flags)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :func:`platform.processor` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model name", "Hardware"):
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def isa_limits() -> tuple[str, ...]:
    """``NAME=value`` of each variable of :data:`ISA_LIMITS` set in this process's environment."""
    return tuple(f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name))


def describe_cpu() -> str:
    """One line: the CPU's name, its features of :data:`FEATURES`, and any instruction-set cap (:data:`ISA_LIMITS`)."""
    limits = isa_limits()
    capped = f"; kernels capped by {' '.join(limits)}" if limits else ""
    return f"{cpu_name()} ({' '.join(cpu_features()) or 'no listed features'}{capped})"


def machine_id(device: str = "cpu") -> str:
    """What tells this machine from another for a record: the CPU (name, features) or the given GPU name."""
    return f"cpu: {describe_cpu()}" if device == "cpu" else device


def torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def config_digest(config: dict[str, Any]) -> str:
    """A digest of a model's architecture: its config without names, versions and dtype."""
    kept = {k: v for k, v in config.items() if k not in _IGNORED_CONFIG}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_config(source: str) -> dict[str, Any] | None:
    """The ``config.json`` of a local model directory or of a hub id in the local hub cache, or None."""
    file: Any = Path(source) / "config.json"
    if not file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            file = try_to_load_from_cache(source, "config.json")
        except Exception:  # noqa: BLE001 - not a hub id: no record then
            return None
        if not isinstance(file, str):
            return None
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def record_key(config: dict[str, Any], device: str = "cpu") -> str:
    """The key of a model's record on this machine (see the module's description)."""
    parts = [config_digest(config), machine_id(device), torch_version(), str(PROBE_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def records_file() -> Path:
    return cache_dir() / RECORDS


def read_records() -> dict[str, Any]:
    """Every record of this cache directory (empty when there is none or the file is unreadable)."""
    try:
        records = json.loads(records_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s: %s", records_file(), exc)
        return {}
    return records if isinstance(records, dict) else {}


def read_record(key: str) -> dict[str, Any] | None:
    """The record under ``key``, or None."""
    record = read_records().get(key)
    return record if isinstance(record, dict) and isinstance(record.get("dtype"), str) else None


def write_record(key: str, record: dict[str, Any]) -> None:
    """Store ``record`` under ``key`` (atomically; an unwritable cache only logs a warning)."""
    records = read_records()
    records[key] = record
    try:
        with atomic_path(records_file()) as tmp:
            tmp.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")
    except OSError as exc:
        logger.warning("could not record the dtype choice in %s: %s", records_file(), exc)


def recorded_choice(source: str, device: str = "cpu") -> dict[str, Any] | None:
    """The record for the model at ``source`` (a local directory or a cached hub id) on this machine, or None."""
    config = source_config(os.fspath(source))
    return None if config is None else read_record(record_key(config, device))
