"""Label-word and template search (the `suggest` command is in suggest_cli.py, template ensembles in ensemble.py).

Word search follows LM-BFF (Gao et al. 2021) and PETAL (Schick et al. 2020): the labeled examples are
rendered with the prompt and the model's next-token distribution over its whole vocabulary is taken
once per example. For each label, the candidate words are the single-token words the model finds
most likely after that label's examples; they are ranked by how much more likely they are there
than after the examples of the closest other label. How many words each label keeps is chosen by
cross-validated accuracy on the labeled examples (calibrated as asked), and so is the prompt among a
few candidates. Everything after the one forward pass per prompt is array arithmetic, so the
cross-validation costs nothing more on the model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from .calibration import CONTENT_FREE, get_calibrator, log_softmax
from .inputs import check_labels, check_texts
from .knn import next_token_log_probs, resolve_scorer
from .prompts import resolve_template
from .scoring import Scorer, aggregate
from .template import Template, load_template

N_WORDS = (1, 2, 3, 4)
CALIBRATIONS = (None, "contextual", "batch")
DEFAULT_PROMPTS = ("{text}\nCategory:", "Text: {text}\nLabel:", "{text}\nThis text is about")


@dataclass(frozen=True)
class Suggestion:
    """A searched template and how well it did in cross-validation on the labeled examples.

    ``template`` has the prompt and the suggested words; ``cv_accuracy`` is the cross-validated accuracy
    of the words (their number per label picked inside the search); ``template_cv_accuracy`` that of
    the input template's own words with the same prompt; ``by_n_words`` the accuracy per number of
    words; ``candidates`` the ranked candidate words per label.
    """

    template: Template
    cv_accuracy: float
    template_cv_accuracy: float
    by_n_words: dict[int, float]
    candidates: dict[str, list[str]]


def word_tokens(tokenizer: Any, prefix: str, vocab_size: int) -> tuple[np.ndarray, list[str]]:
    """Token ids that are a whole word after ``prefix`` (``prefix + word`` encodes to that one token), and the words.

    A word is alphabetic, two letters or more, so punctuation, numbers and word pieces never become label words.
    """
    n = min(len(tokenizer), vocab_size)
    # Decoded after another token: SentencePiece decoders drop the leading space of a text's first token.
    anchor = tokenizer("x", add_special_tokens=False)["input_ids"][-1:]
    skip = len(tokenizer.decode(anchor))
    decoded = [s[skip:] for s in tokenizer.batch_decode([[*anchor, i] for i in range(n)])]
    cand = [
        (i, s[len(prefix) :])
        for i, s in enumerate(decoded)
        if s.startswith(prefix) and len(s) - len(prefix) >= 2 and s[len(prefix) :].isalpha()
    ]
    encoded = tokenizer([prefix + w for _, w in cand], add_special_tokens=False)["input_ids"]
    keep = [(i, w) for (i, w), ids in zip(cand, encoded, strict=True) if list(ids) == [i]]
    return np.array([i for i, _ in keep], dtype=np.int64), [w for _, w in keep]


def rank_candidates(logp: np.ndarray, y: np.ndarray, n_classes: int, n_candidates: int = 100) -> list[np.ndarray]:
    """Columns of ``logp`` (n, W) ranked per class: the ``n_candidates`` likeliest after the class's
    examples (mean log-prob), best first by their margin over the likeliest other class.

    A column goes to one class at most (the one where its margin is largest).
    """
    means = np.stack([logp[y == c].mean(0) for c in range(n_classes)])  # (C, W)
    owner = means.argmax(0)  # (W,) the class after whose examples each word is likeliest
    out = []
    for c in range(n_classes):
        margin = means[c] - np.delete(means, c, axis=0).max(0)  # (W,)
        pool = np.argsort(-means[c], kind="stable")[:n_candidates]
        mine, rest = pool[owner[pool] == c], pool[owner[pool] != c]
        by_margin = [p[np.argsort(-margin[p], kind="stable")] for p in (mine, rest)]
        out.append(np.concatenate(by_margin))  # words of other classes last: only if this one has too few
    return out


def pick_words(ranked: list[np.ndarray], n_words: int) -> list[np.ndarray]:
    """The first ``n_words`` of each class's ranking, never a column already taken by another class."""
    taken: set[int] = set()
    out = []
    for order in ranked:
        mine = [int(j) for j in order if int(j) not in taken][:n_words]
        taken.update(mine)
        out.append(np.array(mine, dtype=np.int64))
    return out


def accuracy_of(
    words: list[np.ndarray], logp: np.ndarray, y: np.ndarray, cf_logp: np.ndarray, calibration: str | None
) -> float:
    """Accuracy of these label words (columns of ``logp``) on the rows of ``logp``, calibrated as asked."""
    cols = np.concatenate(words)
    word_label = np.concatenate([np.full(len(w), c) for c, w in enumerate(words)])
    scores = aggregate(logp[:, cols], word_label, len(words))  # (n, C)
    if calibration == "contextual":
        scores = get_calibrator("contextual").fit(aggregate(cf_logp[:, cols], word_label, len(words))).transform(scores)
    elif calibration == "batch":
        scores = get_calibrator("batch").fit(scores).transform(scores)
    else:
        scores = log_softmax(scores)
    return float(np.mean(scores.argmax(1) == y))


def _folds(y: np.ndarray, cv: int, random_state: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    smallest = int(np.bincount(y).min())
    if smallest < 2:
        raise ValueError(
            f"label-word search needs at least 2 labeled examples of every label for cross-validation; "
            f"one label has {smallest}: give a few examples per label (LM-BFF uses 16)"
        )
    skf = StratifiedKFold(n_splits=min(cv, smallest), shuffle=True, random_state=random_state)
    return list(skf.split(np.zeros(len(y)), y))


def search_words(
    logp: np.ndarray,
    y: np.ndarray,
    cf_logp: np.ndarray,
    n_classes: int,
    n_words: Sequence[int] = N_WORDS,
    n_candidates: int = 100,
    cv: int = 4,
    calibration: str | None = "contextual",
    random_state: int | None = 0,
) -> tuple[list[np.ndarray], int, dict[int, float], list[np.ndarray]]:
    """Array core of the word search: (chosen columns per class, their number, CV accuracy per number, rankings).

    ``logp`` (n, W) are the examples' log-probs of the candidate words, ``cf_logp`` (m, W) those of the
    content-free inputs; words are re-ranked inside each fold on its training part only.
    """
    folds = _folds(y, cv, random_state)
    by_n = {m: 0.0 for m in n_words}
    for train, held in folds:
        ranked = rank_candidates(logp[train], y[train], n_classes, n_candidates)
        for m in n_words:
            by_n[m] += accuracy_of(pick_words(ranked, m), logp[held], y[held], cf_logp, calibration) / len(folds)
    best = max(n_words, key=lambda m: (round(by_n[m], 9), -m))  # ties: fewer words
    ranked = rank_candidates(logp, y, n_classes, n_candidates)
    return pick_words(ranked, best), best, by_n, ranked


def _shipped_ids(template: Template, scorer: Scorer) -> list[np.ndarray]:
    """The template's own words as token ids per label (a word of several tokens by its first token)."""
    tokens = template.labels.encode(scorer.tokenizer, template.label_prefix, template.render(template.sample_text))
    return [
        np.array([ids[0] for ids, lab in zip(tokens.word_ids, tokens.word_label, strict=True) if lab == c])
        for c in range(len(template.labels))
    ]


def suggest_label_words(
    X: Any,
    y: Any,
    template: str | Path | Template,
    model: str | Path | Scorer | None = None,
    *,
    n_words: Sequence[int] = N_WORDS,
    n_candidates: int = 100,
    cv: int = 4,
    calibration: str | None = "contextual",
    random_state: int | None = 0,
    progress: bool = False,
) -> Suggestion:
    """Propose label words for each label from the model's vocabulary, given labeled examples.

    Parameters
    ----------
    X : sequence of str
        Labeled texts, a few per label (LM-BFF uses 16).
    y : sequence of str
        Their labels, names from the template.
    template : str, Path or Template
        Its prompt is kept; its own words are the baseline (``template_cv_accuracy``).
    model : str, Path, Scorer or None
        As for :class:`Verbalizer`.
    n_words : sequence of int
        Numbers of words per label to try; cross-validation picks one.
    n_candidates : int
        How many of each label's likeliest words are ranked.
    cv : int
        Folds of the stratified cross-validation.
    calibration : {None, "contextual", "batch"}
        How scores are calibrated inside the search (as they will be at prediction).

    Returns
    -------
    Suggestion
        ``.template`` is the input template with the suggested words.

    Raises
    ------
    ValueError
        On an unknown calibration, or fewer than 2 examples of some label.
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration for the search must be one of {CALIBRATIONS}, got {calibration!r}")
    tpl = resolve_template(template, None)
    labels = list(tpl.labels)
    texts, ys = check_texts(X), check_labels(y, labels)
    if len(texts) != len(ys):
        raise ValueError(f"X and y have different lengths: {len(texts)} texts, {len(ys)} labels")
    scorer = resolve_scorer(model, "auto", "float32", 64, None)
    y_idx = np.array([labels.index(v) for v in ys])
    cols, words = word_tokens(scorer.tokenizer, tpl.label_prefix, scorer.model.config.vocab_size)
    full = next_token_log_probs(scorer, tpl, texts, progress=progress)  # (n, V)
    full_cf = next_token_log_probs(scorer, tpl, list(CONTENT_FREE))  # (m, V)
    logp, cf = full[:, cols], full_cf[:, cols]
    chosen, best, by_n, ranked = search_words(
        logp, y_idx, cf, len(labels), n_words, n_candidates, cv, calibration, random_state
    )
    shipped = _shipped_ids(tpl, scorer)
    folds = _folds(y_idx, cv, random_state)
    shipped_acc = float(np.mean([accuracy_of(shipped, full[h], y_idx[h], full_cf, calibration) for _, h in folds]))
    new = {lab: [words[j] for j in chosen[c]] for c, lab in enumerate(labels)}
    return Suggestion(
        template=dataclasses.replace(tpl, labels=new),  # type: ignore[arg-type]
        cv_accuracy=by_n[best],
        template_cv_accuracy=shipped_acc,
        by_n_words=by_n,
        candidates={lab: [words[j] for j in ranked[c][:10]] for c, lab in enumerate(labels)},
    )


def candidate_templates(template: Template, prompts: Sequence[str] | None = None) -> list[Template]:
    """The template itself, the template with its description as instruction, and other prompts
    (``prompts``, or a few generic ones); all keep the template's labels."""
    out = [template]
    if template.description and not template.instruction:
        out.append(dataclasses.replace(template, instruction=template.description))
    for p in DEFAULT_PROMPTS if prompts is None else prompts:
        if p != template.prompt:
            out.append(dataclasses.replace(template, prompt=p, demo_format=None))
    return out


def rank_templates(
    X: Any,
    y: Any,
    template: str | Path | Template,
    model: str | Path | Scorer | None = None,
    *,
    prompts: Sequence[str] | None = None,
    **search: Any,
) -> list[Suggestion]:
    """Search label words for each candidate prompt (see :func:`candidate_templates`) and rank the
    results by cross-validated accuracy, best first; ``search`` goes to :func:`suggest_label_words`."""
    tpl = resolve_template(template, None)
    scorer = resolve_scorer(model, "auto", "float32", 64, None)
    found = [suggest_label_words(X, y, t, scorer, **search) for t in candidate_templates(tpl, prompts)]
    return sorted(found, key=lambda s: -s.cv_accuracy)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON's escapes are all valid in TOML basic strings


def _toml_key(key: str) -> str:
    return key if key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key) else _toml_string(key)


def to_toml(template: Template, header: str = "") -> str:
    """A template file's text for ``template`` (comment lines from ``header`` first)."""
    lines = [f"# {line}" for line in header.splitlines()]
    fields = {
        "name": template.name,
        "description": template.description,
        "instruction": template.instruction,
        "prompt": template.prompt,
        "label_prefix": template.label_prefix,
        "sample_text": template.sample_text,
    }
    lines += [f"{k} = {_toml_string(v)}" for k, v in fields.items() if v or k in ("prompt", "label_prefix")]
    lines += ["", "[labels]"]
    lines += [f"{_toml_key(k)} = [{', '.join(_toml_string(w) for w in v)}]" for k, v in template.labels.items()]
    lines += ["", "[demos]"]
    if template.demo_format is not None:
        lines.append(f"format = {_toml_string(template.demo_format)}")
    lines.append(f"separator = {_toml_string(template.demo_separator)}")
    return "\n".join(lines) + "\n"


def write_template(template: Template, path: str | Path, source: str | Path | None = None, header: str = "") -> Path:
    """Write ``template`` as a TOML file and check it as ``verbalize check`` does (it must load again).

    Raises
    ------
    FileExistsError
        When ``path`` is the input template ``source`` (never overwritten).
    """
    path = Path(path)
    if source is not None and Path(source).exists() and path.resolve() == Path(source).resolve():
        raise FileExistsError(f"{path} is the input template; suggest never overwrites it: pass another --output")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(template, header), encoding="utf-8")
    load_template(path)  # the loader's checks: a file that does not load must not go unnoticed
    return path


# -- command line: verbalize suggest TEMPLATE LABELED.jsonl ----------------------------------------
