"""Label-word and template search (the `suggest` command is in suggest_cli.py, template ensembles in ensemble.py).

Word search follows LM-BFF (Gao et al. 2021) and PETAL (Schick et al. 2020): the labeled examples are
rendered with the prompt and the model's next-token distribution over its whole vocabulary is taken
once per example. For each label, the candidate words are the single-token, lower-case words (no proper
nouns, unless the template's own words are capitalised) that are likely after MOST of that label's
examples (the median of their log-probs, which a few examples cannot dominate); they are ranked by
AUC: how often the word is likelier after one of the label's examples than after another label's.
AUC is rank-based, so a word very likely after two examples only (a name in them) does not win, and
it is unchanged by calibration (a constant per word). Cross-validation on the labeled examples, with
the calibration the template will be used with, then picks among the input template's own words, the
new words (1 to 4 per label) and the input words together with new ones; all on the same folds, ties
going to the input's words. Everything after the one forward pass per prompt is array arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verbalize.calibration.calibrators import CONTENT_FREE, get_calibrator, log_softmax
from verbalize.calibration.folds import stratified_folds
from verbalize.engine.scoring import Scorer, aggregate
from verbalize.errors import TemplateError, check_choice, check_int
from verbalize.progress import shown_if, stage
from verbalize.prompting.prompts import resolve_template
from verbalize.prompting.template import Template
from verbalize.prompting.template_toml import to_toml, write_template
from verbalize.rows import Row, check_labels, check_rows

__all__ = ["Suggestion", "WordChoice", "rank_templates", "suggest_label_words", "to_toml", "write_template"]

N_WORDS = (1, 2, 3, 4)
CALIBRATIONS = (None, "contextual", "batch")
DEFAULT_PROMPTS = ("{text}\nCategory:", "Text: {text}\nLabel:", "{text}\nThis text is about")
INPUT, NEW, BOTH = "input", "new", "input+new"


@dataclass(frozen=True)
class Suggestion:
    """A searched template and how well it did in cross-validation on the labeled examples.

    ``template`` has the prompt and the chosen words; ``choice`` says which words: ``"input"`` (the
    input template's own words did best: they are kept), ``"new"`` (searched words only) or
    ``"input+new"`` (the input's words and searched ones). ``cv_accuracy`` is the cross-validated
    accuracy of the chosen words, ``template_cv_accuracy`` that of the input template's own words with
    the same prompt on the same folds; ``by_option`` every option's accuracy (``"new 2"``: two new
    words per label); ``by_n_words`` that of the new words per number; ``candidates`` the ranked
    candidate words per label.
    """

    template: Template
    cv_accuracy: float
    template_cv_accuracy: float
    by_n_words: dict[int, float]
    candidates: dict[str, list[str]]
    choice: str = NEW
    by_option: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def improves(self) -> bool:
        """True only when cross-validation puts the chosen words strictly above the input's own words."""
        return self.choice != INPUT and self.cv_accuracy > self.template_cv_accuracy


@dataclass(frozen=True)
class WordChoice:
    """What :func:`search_words` chose: ``words`` (columns per class), ``option`` (``"input"``,
    ``"new"``, ``"input+new"``), ``n_new`` (new words per class), ``cv`` (accuracy per option) and
    ``ranked`` (each class's candidate columns, best first)."""

    words: list[np.ndarray]
    option: str
    n_new: int
    cv: dict[str, float]
    ranked: list[np.ndarray]


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


def eligible(words: Sequence[str], template_words: Sequence[str]) -> np.ndarray:
    """Which ``words`` may be proposed: not capitalised (proper nouns, likely after the few examples that
    name them), unless a word of the template is capitalised itself (then case is the template's style)."""
    if any(w[:1].isupper() for w in template_words):
        return np.ones(len(words), dtype=bool)
    return np.array([not w[:1].isupper() for w in words], dtype=bool)


def auc_per_class(logp: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, W): for each class and column, the probability that the column's log-prob after a random
    example of the class exceeds that after a random example of another class (ROC AUC, Mann-Whitney)."""
    ranks = np.argsort(np.argsort(logp, axis=0, kind="stable"), axis=0, kind="stable") + 1.0  # (n, W)
    out = np.empty((n_classes, logp.shape[1]))
    for c in range(n_classes):
        pos = y == c
        n1, n0 = int(pos.sum()), int((~pos).sum())
        out[c] = (ranks[pos].sum(0) - n1 * (n1 + 1) / 2) / max(n1 * n0, 1)
    return out


def rank_candidates(logp: np.ndarray, y: np.ndarray, n_classes: int, n_candidates: int = 100) -> list[np.ndarray]:
    """Columns of ``logp`` (n, W) ranked per class: the ``n_candidates`` likeliest after most of the class's
    examples (median log-prob), best first by AUC of the class against the others (ties: by the gap between
    the medians after the class's examples and after the others').

    A column goes to one class at most (the one where its AUC is largest); another class's columns come last.
    """
    auc = auc_per_class(logp, y, n_classes)
    owner = auc.argmax(0)
    out = []
    for c in range(n_classes):
        med = np.median(logp[y == c], axis=0)  # (W,)
        gap = med - np.median(logp[y != c], axis=0)  # ties in AUC: how much likelier after the class's examples
        pool = np.argsort(-med, kind="stable")[:n_candidates]
        mine, rest = pool[owner[pool] == c], pool[owner[pool] != c]
        out.append(np.concatenate([p[np.lexsort((-gap[p], -auc[c][p]))] for p in (mine, rest)]))
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
    return stratified_folds(y, min(cv, smallest), random_state)


def _options(
    ranked: list[np.ndarray], n_words: Sequence[int], baseline: list[np.ndarray] | None
) -> dict[tuple[str, int], list[np.ndarray]]:
    out: dict[tuple[str, int], list[np.ndarray]] = {}
    if baseline is not None:
        out[(INPUT, 0)] = baseline
        taken = np.concatenate(baseline)
        others = [r[~np.isin(r, taken)] for r in ranked]  # added to the input's words: none of them again
    for m in n_words:
        out[(NEW, m)] = pick_words(ranked, m)
        if baseline is not None:
            out[(BOTH, m)] = [np.concatenate([b, w]) for b, w in zip(baseline, pick_words(others, m), strict=True)]
    return out


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
    candidates: np.ndarray | None = None,
    baseline: list[np.ndarray] | None = None,
) -> WordChoice:
    """Array core of the word search.

    ``logp`` (n, W) are the examples' log-probs, ``cf_logp`` (m, W) those of the content-free inputs;
    ``candidates`` the columns that may become new words (default all), ``baseline`` the input
    template's words as columns per class (added to, new words are other columns). New words are
    re-ranked inside each fold on its training part only; every option (the baseline, ``m`` new words
    for each ``m`` in ``n_words``, the baseline plus ``m`` new words) is scored on the same folds. The
    best mean accuracy wins; ties go to the baseline, then to fewer words.
    """
    cand = np.arange(logp.shape[1]) if candidates is None else np.asarray(candidates, dtype=np.int64)

    def ranked_on(rows: np.ndarray) -> list[np.ndarray]:
        return [cand[r] for r in rank_candidates(logp[rows][:, cand], y[rows], n_classes, n_candidates)]

    folds = _folds(y, cv, random_state)
    score: dict[tuple[str, int], float] = {}
    for train, held in folds:
        for key, words in _options(ranked_on(train), n_words, baseline).items():
            acc = accuracy_of(words, logp[held], y[held], cf_logp, calibration)
            score[key] = score.get(key, 0.0) + acc / len(folds)

    def size(key: tuple[str, int]) -> int:
        return key[1] + (0 if key[0] == NEW or baseline is None else max(len(b) for b in baseline))

    best = max(score, key=lambda k: (round(score[k], 9), k[0] == INPUT, -size(k)))
    ranked = ranked_on(np.arange(len(y)))
    names = {k: k[0] if k[0] == INPUT else f"{k[0]} {k[1]}" for k in score}
    return WordChoice(
        words=_options(ranked, n_words, baseline)[best],
        option=best[0],
        n_new=best[1],
        cv={names[k]: v for k, v in score.items()},
        ranked=ranked,
    )


def next_token_log_probs(scorer: Scorer, template: Template, rows: Sequence[Row], progress: bool = False) -> np.ndarray:
    """The model's log-distribution over its vocabulary after each rendered row, (n, V) (the Scorer's own path)."""
    prompts, spans = template.spans(rows)
    return scorer.next_token_log_probs(prompts, spans, template.prefix(), progress)


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
    X : sequence of rows
        Labeled rows, a few per label (LM-BFF uses 16): as for :class:`Verbalizer` (a str per row for a
        one-field template; a dict {field: text}, a tuple in field order or a DataFrame for several fields).
    y : sequence of str
        Their labels, names from the template.
    template : str, Path or Template
        Its prompt is kept; its own words are the baseline (``template_cv_accuracy``), scored on the same
        folds, and kept (alone or with new words) when cross-validation prefers them.
    model : str, Path, Scorer or None
        As for :class:`Verbalizer`.
    n_words : sequence of int
        Numbers of words per label to try; cross-validation picks one.
    n_candidates : int
        How many of each label's likeliest words are ranked.
    cv : int
        Folds of the stratified cross-validation.
    calibration : {None, "contextual", "batch"}
        How scores are calibrated inside the search: as the template will be used at prediction
        (``"contextual"``, the default, is what :class:`Verbalizer` and the eval use; ``"batch"`` when
        whole batches are calibrated on themselves).

    Returns
    -------
    Suggestion
        ``.template`` is the input template with the chosen words; ``.choice`` says whether they are the
        input's own (when no searched words beat them in cross-validation), new ones, or both;
        ``.improves`` whether cross-validation puts them above the input's words.

    Raises
    ------
    ParameterError
        On an unknown calibration, or ``cv`` < 2.
    ValueError
        On fewer than 2 examples of some label.
    """
    check_choice(calibration, CALIBRATIONS, "calibration", "suggest_label_words")
    check_int(cv, "cv", "suggest_label_words", low=2)
    tpl = resolve_template(template, None)
    labels = list(tpl.labels)
    texts, ys = check_rows(X, tpl.fields), check_labels(y, labels)
    if len(texts) != len(ys):
        raise ValueError(f"X and y have different lengths: {len(texts)} rows, {len(ys)} labels")
    with shown_if(progress):  # a cold cache converts the embedded model first
        scorer = Scorer.resolve(model, batch_size=64, max_length=None)
    y_idx = np.array([labels.index(v) for v in ys])
    cols, words = word_tokens(scorer.tokenizer, tpl.label_prefix, scorer.model.config.vocab_size)
    ok = eligible(words, [w for ws in tpl.labels.values() for w in ws])
    cols, words = cols[ok], [w for w, k in zip(words, ok, strict=True) if k]
    full = next_token_log_probs(scorer, tpl, texts, progress=progress)  # (n, V)
    full_cf = next_token_log_probs(scorer, tpl, list(CONTENT_FREE))  # (m, V): a str fills every field
    shipped = _shipped_ids(tpl, scorer)
    found = search_words(
        full, y_idx, full_cf, len(labels), n_words, n_candidates, cv, calibration, random_state, cols, shipped
    )
    word_of = dict(zip(cols.tolist(), words, strict=True))
    skip = [len(s) if found.option == BOTH else 0 for s in shipped]  # "input+new": the input's words come first
    new = {lab: [word_of[int(j)] for j in found.words[c][skip[c] :]] for c, lab in enumerate(labels)}
    chosen = {
        INPUT: {lab: list(ws) for lab, ws in tpl.labels.items()},
        NEW: new,
        BOTH: {lab: [*tpl.labels[lab], *new[lab]] for lab in labels},
    }[found.option]
    return Suggestion(
        template=tpl if found.option == INPUT else dataclasses.replace(tpl, labels=chosen),  # type: ignore[arg-type]
        cv_accuracy=max(found.cv.values()),
        template_cv_accuracy=found.cv[INPUT],
        by_n_words={m: found.cv[f"{NEW} {m}"] for m in n_words},
        candidates={lab: [word_of[int(j)] for j in found.ranked[c][:10]] for c, lab in enumerate(labels)},
        choice=found.option,
        by_option=found.cv,
    )


def generic_prompts(fields: Sequence[str]) -> list[str]:
    """:data:`DEFAULT_PROMPTS` with the template's fields in place of ``{text}`` (several: one per line)."""
    filled = "\n".join("{" + f + "}" for f in fields)
    return [p.replace("{text}", filled) for p in DEFAULT_PROMPTS]


def candidate_templates(template: Template, prompts: Sequence[str] | None = None) -> list[Template]:
    """The template itself, the template with its description as instruction, and other prompts
    (``prompts``, or a few generic ones with the template's fields); all keep the template's labels and fields.

    Raises
    ------
    TemplateError
        A prompt of ``prompts`` without the template's fields (the message lists the allowed placeholders).
    """
    out = [template]
    if template.description and not template.instruction:
        out.append(dataclasses.replace(template, instruction=template.description))
    for p in generic_prompts(template.fields) if prompts is None else prompts:
        if p == template.prompt:
            continue
        try:
            out.append(dataclasses.replace(template, prompt=p, demo_format=None))
        except TemplateError as exc:
            fields = ", ".join("{" + f + "}" for f in template.fields)
            head = f"candidate prompt {p!r} (suggest --prompt): it reads the template's rows, so it needs {fields}"
            raise TemplateError([head, *exc.issues]) from None
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
    with shown_if(bool(search.get("progress"))):
        scorer = Scorer.resolve(model, batch_size=64, max_length=None)
        found = []
        candidates = candidate_templates(tpl, prompts)
        for i, t in enumerate(candidates, 1):
            with stage(f"searching label words for prompt {i} of {len(candidates)}: {t.prompt[:60]!r}"):
                found.append(suggest_label_words(X, y, t, scorer, **search))
    return sorted(found, key=lambda s: -round(s.cv_accuracy, 9))  # stable: on ties the input template first
