"""The process-wide model cache: one loaded copy per model, evictable, clearable on purpose."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from verbalize import Scorer, clear_model_cache


def _save(family: Any, path: Path) -> Path:
    family.model.save_pretrained(path)
    family.tokenizer.save_pretrained(path)
    return path


def _replace(family: Any, path: Path) -> None:
    """Save the model again to ``path`` as ``Verbalizer.save`` does: a new directory renamed into place."""
    tmp = _save(family, path.with_name(path.name + ".new"))
    os.rename(path, path.with_name(path.name + ".old"))
    os.rename(tmp, path)


def _dead(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


def test_a_model_is_loaded_once_and_clear_frees_it(gpt2: Any, tmp_path: Path):
    path = _save(gpt2, tmp_path / "m")
    first = Scorer.from_pretrained(path, "cpu")
    assert Scorer.from_pretrained(path, "cpu").model is first.model  # loaded once
    ref = weakref.ref(first.model)
    del first
    gc.collect()
    assert ref() is not None  # the cache holds it
    assert clear_model_cache() >= 1
    assert _dead(ref), "the model is still referenced after clear_model_cache()"
    again = Scorer.from_pretrained(path, "cpu")
    assert again.model is not None and clear_model_cache() == 1


def test_a_replaced_directory_evicts_the_old_copy(gpt2: Any, tmp_path: Path):
    clear_model_cache()
    path = _save(gpt2, tmp_path / "m")
    old = Scorer.from_pretrained(path, "cpu")
    ref = weakref.ref(old.model)
    del old
    _replace(gpt2, path)
    new = Scorer.from_pretrained(path, "cpu")  # the new directory's weights, not the cached old ones
    assert ref() is not new.model
    assert _dead(ref), "the replaced directory's model is still cached"
    assert clear_model_cache() == 1


def test_evict_drops_one_model_and_spares_those_in_use(gpt2: Any, tmp_path: Path):
    from verbalize.engine.cache import MODELS

    clear_model_cache()
    a = Scorer.from_pretrained(_save(gpt2, tmp_path / "a"), "cpu")
    b = Scorer.from_pretrained(_save(gpt2, tmp_path / "b"), "cpu")
    assert len(MODELS) == 2 and a.model in MODELS
    assert MODELS.evict(a.model) and not MODELS.evict(a.model)
    assert a.model not in MODELS and b.model in MODELS and len(MODELS) == 1
    with torch.inference_mode():  # the evicted model still works for whoever holds it
        assert a.model(torch.tensor([[1, 2]])).logits.shape[-1] == len(gpt2.tokenizer)
    clear_model_cache()


def test_a_failed_load_caches_nothing(tmp_path: Path):
    from verbalize import ModelLoadError
    from verbalize.engine.cache import MODELS

    clear_model_cache()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="could not load model"):
        Scorer.from_pretrained(tmp_path / "empty", "cpu")
    assert len(MODELS) == 0
