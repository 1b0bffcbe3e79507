"""Does prompt-based fine-tuning keep the model a language model? Perplexity on held-out plain text.

    python eval/generation.py --data ../shared/data                     # SST-2, 64 per class, seed 0

Fine-tunes the embedded model on k SST-2 examples per class: without LM-loss mixing, and with each
kind of mixing (``lm_loss="nll"``, the ordinary next-token loss, or ``"distill"``, KL from the base
model) on the training texts themselves (the default when ``lm_texts`` is not given) or on unlabeled
SST-2 reviews (texts of the train pool that are not among the labeled ones).
For each it prints SST-2 test accuracy and the perplexity of AG News test texts (another dataset:
plain text never seen in training), next to the base model, and checks that the model saved with
``save_pretrained`` loads with ``AutoModelForCausalLM.from_pretrained`` and generates.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from data import data_dir, load, template_path
from finetune import sample
from transformers import AutoModelForCausalLM, AutoTokenizer

from verbalize import FineTuneConfig, Scorer, Verbalizer, load_template
from verbalize.engine.tokens import leading_special_ids
from verbalize.training.lm_mixing import perplexity

PROMPT = "The history of the city begins"
VARIANTS = ("none", "nll-train", "nll-unlabeled", "distill-train", "distill-unlabeled")


def held_out_ppl(model: torch.nn.Module, tokenizer, texts: list[str], lead: list[int], pad_id: int) -> float:
    rows = [lead + x[:128] for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return perplexity(model, rows, pad_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--k", type=int, default=64, help="labeled examples per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=200, help="test rows for accuracy and for perplexity")
    ap.add_argument("--lm-weight", type=float, default=1.0)
    ap.add_argument("--n-unlabeled", type=int, default=512)
    ap.add_argument("--learning-rate", type=float, default=None, help="default: the library's (2e-5)")
    ap.add_argument("--epochs", type=int, default=FineTuneConfig.epochs)
    ap.add_argument("--validation-fraction", type=float, default=FineTuneConfig.validation_fraction)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    train_args = dict(
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        validation_fraction=args.validation_fraction,
        progress=False,
    )

    root = data_dir(args.data)
    test = load("sst2", "test", root, args.limit)
    pool = load("sst2", "train", root)
    plain = load("agnews", "test", root, args.limit)[0]
    tpl = template_path("sst2")
    classes = list(load_template(tpl).labels)
    idx = sample(pool[1], classes, args.k, args.seed)
    train = ([pool[0][i] for i in idx], [pool[1][i] for i in idx])
    taken = set(idx)
    rng = np.random.default_rng(args.seed)
    free = [i for i in rng.permutation(len(pool[0])) if i not in taken][: args.n_unlabeled]
    unlabeled = tuple(pool[0][i] for i in free)

    base = Scorer.from_pretrained(args.model)
    tok, lead, pad = base.tokenizer, leading_special_ids(base.tokenizer), base.pad_id
    rows = []
    base_clf = Verbalizer(template=tpl, model=args.model)
    base_ppl = held_out_ppl(base.model, tok, plain, lead, pad)
    rows.append(("base model (zero-shot)", base_clf.score(*test), base_ppl, 0.0, "-"))
    sources = {"train": None, "unlabeled": unlabeled}
    variants = []
    for v in args.variants:
        if v == "none":
            variants.append(("fine-tuned, no mixing", FineTuneConfig(**train_args)))
            continue
        loss, source = v.split("-")
        where = "training texts" if source == "train" else f"{len(unlabeled)} unlabeled reviews"
        name = f"fine-tuned, {'LM loss' if loss == 'nll' else 'distillation from the base'} on {where}"
        config = FineTuneConfig(lm_weight=args.lm_weight, lm_loss=loss, lm_texts=sources[source], **train_args)
        variants.append((name, config))
    last = None
    for name, config in variants:
        t0 = time.perf_counter()
        clf = Verbalizer(template=tpl, model=args.model, fine_tuning=config, random_state=args.seed).fit(*train)
        seconds = time.perf_counter() - t0
        ppl = held_out_ppl(clf.scorer_.model, tok, plain, lead, pad)
        rows.append((name, clf.score(*test), ppl, seconds, clf.training_.best_epoch))
        print(f"{name}: accuracy {rows[-1][1]:.3f}, perplexity {ppl:.2f} ({seconds:.0f} s)", flush=True)
        last = clf
    print(
        f"\nSST-2 {args.k} per class (seed {args.seed}); accuracy on {len(test[0])} SST-2 test texts; "
        f"perplexity on {len(plain)} AG News test texts (<= 128 tokens each); lm_weight={args.lm_weight}; "
        f"fine-tuning {train_args}\n"
    )
    print("| model | SST-2 accuracy | held-out perplexity | change vs base | fit (s) | best epoch |")
    print("|---|---|---|---|---|---|")
    for name, acc, ppl, secs, epoch in rows:
        change = f"{100 * (ppl / base_ppl - 1):+.1f}%"
        print(f"| {name} | {acc:.3f} | {ppl:.2f} | {change} | {secs:.0f} | {epoch} |")

    assert last is not None
    with tempfile.TemporaryDirectory() as d:
        last.save_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d)
        tokenizer = AutoTokenizer.from_pretrained(d)
        ids = tokenizer(PROMPT, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=20, do_sample=False, pad_token_id=pad)
        print(
            "\ngenerate() after save_pretrained/from_pretrained: "
            f"{tokenizer.decode(out[0], skip_special_tokens=True)!r}"
        )
        ids = tok(PROMPT, return_tensors="pt")
        out = base.model.generate(**ids, max_new_tokens=20, do_sample=False, pad_token_id=pad)
        print(f"base model:                                       {tok.decode(out[0], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
