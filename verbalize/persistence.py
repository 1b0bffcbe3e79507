"""Saving and loading a classifier directory: ``verbalize.json``, ``heads.safetensors``, ``model/``. No pickle.

A save is atomic: the directory is written to a hidden temporary sibling and renamed into place,
so a crash at any step leaves either the previous classifier or the new one, never a mix. (Between
moving the previous directory aside and renaming the new one in, the target is briefly missing; a
crash there leaves the previous version in a ``.NAME.old-*`` sibling, which :func:`load` points to.)

A load checks ``format_version``, takes the language model from the directory's own ``model/`` and
never from the working directory, and turns any malformed file into a
:class:`~verbalize.errors.SavedClassifierError` that names the file and key.
"""

from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verbalize.atomic import atomic_dir
from verbalize.calibration.calibrators import CALIBRATORS, Calibrator
from verbalize.engine.model_files import quiet
from verbalize.engine.models import finish_narrow, int8_tensors, is_quantized, load_int8_tensors, quantize
from verbalize.engine.scoring import Scorer
from verbalize.errors import SavedClassifierError
from verbalize.prompting.template import Template
from verbalize.rows import Row
from verbalize.training.config import FineTuneConfig
from verbalize.training.heads import FittedHead, Head

FORMAT_VERSION = 1
STATE_FILE = "verbalize.json"
HEADS_FILE = "heads.safetensors"
MODEL_DIR = "model"


def _checkpoint(step: str) -> None:
    """A named step of :func:`save`; tests replace this function to simulate a crash at each step."""


def save(clf: Any, path: str | Path) -> Path:
    """Write ``clf`` (already set up) to the directory ``path``, replacing an earlier save atomically.

    Raises
    ------
    SavedClassifierError
        When ``path`` is a file, or a non-empty directory that is not a saved classifier (never replaced).
    """
    path = Path(path)
    _check_target(path)
    with atomic_dir(path, checkpoint=_checkpoint) as tmp:  # steps "rename" and "clean up" are atomic_dir's
        _checkpoint("model")
        state = _state(clf)
        if state["params"]["model"] == MODEL_DIR:
            save_model(clf.scorer_, tmp / MODEL_DIR)
        _checkpoint("heads")
        if clf.heads_:
            from safetensors.torch import save_file

            tensors = {k: v for h in clf.heads_.values() for k, v in h.tensors().items()}
            save_file(tensors, str(tmp / HEADS_FILE))
        _checkpoint("state")  # written last: a directory without it is never taken for a classifier
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def save_model(scorer: Scorer, path: str | Path) -> Path:
    """Write the scorer's model and tokenizer as a Hugging Face directory (``from_pretrained`` loads it)."""
    path = Path(path)
    with quiet():
        scorer.model.save_pretrained(path)
        scorer.tokenizer.save_pretrained(path)
    return path


def pickle_state(state: dict[str, Any]) -> dict[str, Any]:
    """What pickling a classifier keeps of its ``__dict__``: not the shared, cached model (it is loaded
    again on first use), but a fine-tuned one (see :func:`reduce_scorer`)."""
    state = dict(state)
    if not state.get("fine_tuned_"):
        state.pop("scorer_", None)
    return state


def reduce_scorer(scorer: Scorer) -> tuple[Any, tuple[Any, ...]]:
    """Pickle a :class:`Scorer` as its model's class, config and tensors, and its tokenizer: the module itself
    may not pickle (transformers puts local-function hooks on it once hidden states were asked for)."""
    model = scorer.model
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    int8 = int8_tensors(model) if is_quantized(model) else None  # int8 layers keep their tensors out of state_dict
    place = (str(scorer.device), next(model.parameters()).dtype, int8)
    sizes = (scorer.batch_size, scorer.context_length, scorer.max_tokens)
    return _rebuild_scorer, (type(model), model.config, weights, scorer.tokenizer, place, sizes)


def _rebuild_scorer(model_class: Any, config: Any, weights: Any, tokenizer: Any, place: Any, sizes: Any) -> Scorer:
    model = model_class(config).to(dtype=place[1])
    int8 = place[2] if len(place) > 2 else None
    if int8 is not None:
        quantize(model)  # the same layers, then their int8 tensors as they were
        model.load_state_dict(weights)
        load_int8_tensors(model, int8)
    else:
        model.load_state_dict(weights)
    model = model.to(place[0]).eval()
    finish_narrow(model, str(place[1]).removeprefix("torch."))  # a narrow model's float32 stream, as loaded
    return Scorer(model, tokenizer, *sizes)


copyreg.pickle(Scorer, reduce_scorer)


def _state(clf: Any) -> dict[str, Any]:
    params = clf.get_params(deep=False)
    in_dir = isinstance(params["model"], Scorer) or clf.fine_tuned_
    if in_dir:
        params["model"] = MODEL_DIR
    elif params["model"] is not None:
        params["model"] = str(params["model"])
    cal = clf.calibrator_
    params["calibration"] = cal.name if cal is not None else None
    params["template"], params["labels"] = None, None
    params["heads"] = [dataclasses.asdict(h) for h in clf.head_specs_] or None
    params["fine_tuning"] = clf.fine_tuning.to_dict() if clf.fine_tuning is not None else None
    template = clf.template_
    fields = [f.name for f in dataclasses.fields(Template) if f.name not in ("labels", "source")]
    return {
        "format_version": FORMAT_VERSION,
        "params": params,
        "model_in_directory": in_dir,
        "template": {name: getattr(template, name) for name in fields} | {"labels": dict(template.labels)},
        "demos": clf.demos_,
        "demo_pool": clf.demo_pool_,
        "calibrator": {"name": cal.name, "state": cal.get_state()} if cal else None,
        "heads": {name: {"classes": list(h.classes)} for name, h in clf.heads_.items()},
        "fine_tuned": clf.fine_tuned_,
    }


def _check_target(path: Path) -> None:
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise SavedClassifierError(f"{path} is a file, not a directory: choose a directory path to save to")
    if path.is_dir() and any(path.iterdir()) and not (path / STATE_FILE).is_file():
        raise SavedClassifierError(
            f"{path} is a non-empty directory without {STATE_FILE}: it is not a saved classifier, and saving "
            "would replace it. Choose a new or empty directory"
        )


# -- load --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(file: Path, key: str) -> Iterator[None]:
    """Turn a malformed value under ``key`` into one error naming the file and the key."""
    try:
        yield
    except SavedClassifierError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise SavedClassifierError(
            f"{file}: {key}: malformed ({detail}); the file was not written by Verbalizer.save or was edited: "
            "save the classifier again"
        ) from exc


@dataclass
class Saved:
    """What a classifier directory holds: the parameters to construct it with, and its fitted state."""

    params: dict[str, Any]
    fine_tuned: bool = False
    demos: list[tuple[Row, str]] = field(default_factory=list)
    demo_pool: list[tuple[Row, str]] = field(default_factory=list)
    calibrator: Calibrator | None = None
    heads: dict[str, FittedHead] = field(default_factory=dict)


def load(path: str | Path, known_params: Sequence[str]) -> Saved:
    """Read the classifier directory ``path``; ``known_params`` are the parameter names it may set.

    Raises
    ------
    FileNotFoundError
        When ``path`` holds no ``verbalize.json`` (the message names an interrupted save's leftover).
    SavedClassifierError
        For an unknown ``format_version``, a missing ``model/`` or heads file, or any malformed value.
    """
    path = Path(path)
    file = path / STATE_FILE
    if not file.is_file():
        aside = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f" An interrupted save left the previous version in {aside[-1]}: rename it to {path}." if aside else ""
        raise FileNotFoundError(f"{file} not found: is {path} a directory written by Verbalizer.save?{hint}")
    state = _read_state(file)
    with _reading(file, "params"):
        params = dict(state["params"])
        unknown = sorted(set(params) - set(known_params))
        if unknown:
            raise ValueError(f"unknown parameters {unknown}")
        params["model"] = _model_source(path, state, params.get("model"))
    with _reading(file, "template"):
        params["template"] = Template(**state["template"], source=str(file))
    with _reading(file, "params.heads"):
        params["heads"] = [Head(**h) for h in params["heads"]] if params.get("heads") else None
    with _reading(file, "params.fine_tuning"):
        ft = params.get("fine_tuning")
        params["fine_tuning"] = FineTuneConfig(**ft) if ft else None
    saved = Saved(params)
    with _reading(file, "fine_tuned"):
        saved.fine_tuned = bool(state.get("fine_tuned"))
    fields = params["template"].fields
    with _reading(file, "demos"):
        saved.demos = [_demo(d, fields) for d in state["demos"]]
    with _reading(file, "demo_pool"):
        saved.demo_pool = [_demo(d, fields) for d in state["demo_pool"]]
    saved.calibrator = _calibrator(file, state.get("calibrator"))
    saved.heads = _heads(path, file, state.get("heads"), params["heads"] or [])
    return saved


def _read_state(file: Path) -> dict[str, Any]:
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SavedClassifierError(f"{file}: not valid JSON ({exc}); save the classifier again") from None
    if not isinstance(state, dict):
        raise SavedClassifierError(f"{file}: expected a JSON object, got {type(state).__name__}")
    version = state.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SavedClassifierError(f"{file}: format_version: missing or not an integer (got {version!r})")
    if version > FORMAT_VERSION:
        raise SavedClassifierError(
            f"{file}: format_version: {version} was written by a newer verbalize; this one reads up to "
            f"{FORMAT_VERSION}: upgrade verbalize"
        )
    if version < 1:
        raise SavedClassifierError(f"{file}: format_version: {version} is not a known version (1..{FORMAT_VERSION})")
    return state


def _model_source(path: Path, state: dict[str, Any], model: Any) -> Any:
    """The model a saved classifier names: its own ``model/`` directory (never ``./model``), or a name."""
    in_dir = state.get("model_in_directory", model == MODEL_DIR)  # format 1 files before the key existed
    if not in_dir:
        return model
    own = path / MODEL_DIR
    if not (own / "config.json").is_file():
        raise SavedClassifierError(
            f"{path / STATE_FILE}: params.model: the classifier's model is saved in {own}, which is missing "
            "or has no config.json; copy the whole directory, or save the classifier again"
        )
    _check_inside(path, own)
    return str(own)


def _check_inside(path: Path, own: Path) -> None:
    """Refuse a ``model/`` that is (or holds) a symlink resolving outside the saved directory: loading
    would read weights from elsewhere without a word (a tampered or half-copied directory)."""
    root = path.resolve()
    for item in (own, *own.iterdir()):
        target = item.resolve()
        if not target.is_relative_to(root):
            raise SavedClassifierError(
                f"{path / STATE_FILE}: params.model: {item} resolves to {target}, outside the saved directory "
                f"{path}; a saved classifier reads its model from its own directory only: copy the model files "
                "into it (not a symlink), or save the classifier again"
            )


def _calibrator(file: Path, cal: Any) -> Calibrator | None:
    if not cal:
        return None
    with _reading(file, "calibrator.name"):
        if cal["name"] not in CALIBRATORS:
            raise ValueError(
                f"unknown calibrator {cal['name']!r}; known: {sorted(CALIBRATORS)} "
                "(register a custom one with register_calibrator before loading)"
            )
    with _reading(file, "calibrator.state"):
        return CALIBRATORS[cal["name"]].from_state(cal["state"])


def _heads(path: Path, file: Path, saved: Any, heads: Sequence[Head]) -> dict[str, FittedHead]:
    """The fitted heads (none when the classifier was saved before its heads were fitted)."""
    if not saved:
        return {}
    with _reading(file, "heads"):
        classes = {h.name: list(saved[h.name]["classes"]) for h in heads}
    heads_file = path / HEADS_FILE
    if not heads_file.is_file():
        raise SavedClassifierError(f"{heads_file}: missing; {file} lists heads {list(saved)}")
    from safetensors.torch import load_file

    tensors = load_file(str(heads_file))
    out = {}
    for h in heads:
        with _reading(heads_file, f"{h.name}.weight, {h.name}.bias"):
            out[h.name] = FittedHead.from_tensors(h, classes[h.name], tensors)
    return out


def _demo(d: Any, fields: Sequence[str]) -> tuple[Row, str]:
    """A saved demonstration: [text, label] (one field) or [{field: text}, label] (several), as fit chose it."""
    row, label = d
    if len(fields) == 1:
        ok = isinstance(row, str)
        want = "[text, label] strings"
    else:
        ok = isinstance(row, dict) and sorted(row) == sorted(fields) and all(isinstance(v, str) for v in row.values())
        want = f"[{{field: text}} with the fields {list(fields)}, label]"
    if not ok or not isinstance(label, str):
        raise TypeError(f"expected {want}, got {d!r}")
    return row, label
