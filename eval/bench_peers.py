"""verbalize against the real lm-evaluation-harness, same process, same model object, same texts.

    pip install -e ".[bench]"                                    # lm-eval (not a runtime dependency)
    python eval/bench_peers.py --data ../shared/data             # 512 texts per case, fp32 (slow: see --n)
    python eval/bench_peers.py --data ../shared/data --dtype int8 --cases one-token

lm-eval runs through its own ``HFLM`` wrapper around the model verbalize already loaded
(``pretrained=model``, its tokenizer) with its default CPU settings for log-likelihood requests:
batch 16 and its logits cache (one forward per context when the continuations are single tokens).
Each label word becomes one ``loglikelihood`` request ``(context, label_prefix + word)``, which is
how a multiple-choice task with ``target_delimiter=" "`` reaches the model. Both sides aggregate a
label's words with logsumexp; the decision is the best label.

Cases (all on the first --n test texts):
- one-token: SST-2, one word per label ("negative" / "positive");
- multi-token: AG News, words of several tokens ("world politics", "science and technology", ...);
- three-words: SST-2, the shipped template's three words per label (single tokens, so lm-eval's logits
  cache also runs one forward per text);
- three-multi-token: AG News, three words of several tokens per label (one forward per word for lm-eval);
- 8-demos: SST-2, one word per label, 8 shared demonstrations (balanced, seed 0) before every prompt.
Rounds alternate the two systems; a row's texts/s are medians over rounds and its ratio is the
median of the per-round ratios. Agreement is of decisions; max |delta log-odds| is over every
label's score minus the first label's score.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from data import data_dir, load, template_path

from verbalize import LabelWords, Scorer, Verbalizer, load_template


@dataclass
class Case:
    name: str
    dataset: str
    labels: dict[str, list[str]] | None  # None: the template's own words
    n_demos: int = 0


CASES = {
    "one-token": Case("one-token words (SST-2)", "sst2", {"negative": ["negative"], "positive": ["positive"]}),
    "multi-token": Case(
        "multi-token words (AG News)",
        "agnews",
        {
            "world": ["world politics"],
            "sports": ["sports and games"],
            "business": ["business and finance"],
            "technology": ["science and technology"],
        },
    ),
    "three-words": Case("three words per label (SST-2)", "sst2", None),
    "three-multi-token": Case(
        "three multi-token words per label (AG News)",
        "agnews",
        {
            "world": ["world politics", "international news", "foreign affairs"],
            "sports": ["sports and games", "team sports", "sports news"],
            "business": ["business and finance", "the economy", "stock markets"],
            "technology": ["science and technology", "computer science", "technology news"],
        },
    ),
    "8-demos": Case("8 shared demonstrations (SST-2)", "sst2", {"negative": ["negative"], "positive": ["positive"]}, 8),
}


def lm_eval_model(scorer: Scorer) -> object:
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise SystemExit("this benchmark needs lm-eval: pip install -e '.[bench]'") from exc
    # Its defaults for a CPU log-likelihood run: batch 16, logits cache on.
    return HFLM(pretrained=scorer.model, tokenizer=scorer.tokenizer, batch_size=16, device="cpu")


def lm_eval_scores(lm: object, contexts: list[str], words: list[str]) -> np.ndarray:
    from lm_eval.api.instance import Instance

    requests = [
        Instance("loglikelihood", {}, (c, w), idx=j, metadata=("bench", i, 1))
        for i, c in enumerate(contexts)
        for j, w in enumerate(words)
    ]
    out = lm.loglikelihood(requests, disable_tqdm=True)  # type: ignore[attr-defined]
    return np.array([ll for ll, _ in out], dtype=np.float64).reshape(len(contexts), len(words))


def label_scores(words: np.ndarray, word_label: np.ndarray, n_labels: int) -> np.ndarray:
    return np.stack([np.logaddexp.reduce(words[:, word_label == k], axis=1) for k in range(n_labels)], axis=1)


def run_case(case: Case, scorer: Scorer, root, args: argparse.Namespace, lm: object) -> tuple:
    texts, _ = load(case.dataset, "test", root, args.n)
    template = load_template(template_path(case.dataset))
    if case.labels is not None:
        template = dataclasses.replace(template, labels=LabelWords(case.labels))
    demos: list = []
    if case.n_demos:
        X_tr, y_tr = load(case.dataset, "train", root)
        clf = Verbalizer(template=template, model=scorer, n_demos=case.n_demos, random_state=0).fit(X_tr, y_tr)
        demos = clf.demos_
    prefix = template.prefix(demos)
    prompts, spans = template.spans(texts)
    tokens = template.labels.encode(scorer.tokenizer, template.label_prefix, template.render(texts[0]))
    word_label = np.asarray(tokens.word_label)
    words = [w for ws in template.labels.values() for w in ws]
    n_labels = len(template.labels)
    contexts = [prefix + p for p in prompts]
    continuations = [template.label_prefix + w for w in words]

    ours = scorer.score_words(prompts[:16], tokens, spans[:16], prefix)  # warm-up
    lm_eval_scores(lm, contexts[:16], continuations)
    rounds = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        ours = scorer.score_words(prompts, tokens, spans, prefix)
        a = len(texts) / (time.perf_counter() - t)
        t = time.perf_counter()
        theirs = lm_eval_scores(lm, contexts, continuations)
        b = len(texts) / (time.perf_counter() - t)
        rounds.append((a, b, a / b))
    s1, s2 = label_scores(ours, word_label, n_labels), label_scores(theirs, word_label, n_labels)
    agree = float(np.mean(s1.argmax(1) == s2.argmax(1)))
    delta = float(np.abs((s1 - s1[:, :1]) - (s2 - s2[:, :1])).max())
    a, b, r = (float(np.median([x[i] for x in rounds])) for i in range(3))
    return case.name, len(texts), a, b, r, agree, delta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--dtype", default="float32", help="float32 or int8 (both systems run the same model object)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    root = data_dir(args.data)
    scorer = Scorer.from_pretrained(args.model, "cpu", args.dtype)
    lm = lm_eval_model(scorer)
    import lm_eval

    print(
        f"lm-eval {lm_eval.__version__} HFLM (batch 16, logits cache) vs verbalize, {args.dtype}, "
        f"torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds\n"
    )
    print("| case | texts | verbalize texts/s | lm-eval texts/s | ratio | decisions agree | max abs d log-odds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key in args.cases:
        name, n, a, b, r, agree, delta = run_case(CASES[key], scorer, root, args, lm)
        print(f"| {name} | {n} | {a:.1f} | {b:.1f} | {r:.2f}x | {100 * agree:.1f}% | {delta:.1e} |", flush=True)


if __name__ == "__main__":
    main()
