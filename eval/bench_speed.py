"""Throughput of label-word scoring on SST-2 texts, against naive baselines and the CPU's FLOP bound.

    python eval/bench_speed.py --data ../shared/data            # 512 texts, embedded model
    python eval/bench_speed.py --data ../shared/data --dtype auto --rounds 5   # auto's choice vs float32

Rows of the table (all in one run, same texts, same two labels "negative"/"positive"):
- naive: one forward per (text, label) at batch 1, full-vocabulary logits at every position;
- batched pairs: (text, label) sequences padded into batches (lm-evaluation-harness style);
- verbalize: one forward per length-sorted batch, the output layer at each prompt's last position only,
  once per logits path (--paths): "model" (the default: the model's own forward computes the logits, at
  each row's last position via a per-row logits_to_keep), "hand" (the body, then the output embedding
  and the known output transforms applied by verbalize), "full" (the model's own forward at every
  position, the fallback for forwards without logits_to_keep);
- FLOP bound: the matmul rate of this CPU, measured here on the model's own products (one block's
  q, k, v, o, gate, up, down on a batch of tokens, hot caches, best of 5), divided by the matmul
  FLOPs that the same tokens need (linear layers, causal attention, the output row);
- int8 FLOP bound: the same, with the rate of ``dtype="int8"``'s layers on the same products (per-token
  activation rounding included); ``--dtype int8`` times the scorer on the int8 model.
The naive rows run on --naive-n evenly spaced texts (they are slow), a share of them in each round;
rates are texts per second. The FLOP bound counts every token of every prompt, although the scorer
runs the tokens that all prompts share (the template's words before the text) only once.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from data import data_dir, load, template_path

from verbalize import LabelWords, Scorer, load_template
from verbalize.engine.models import Int8Linear, timing_layers

LABELS = {"negative": ["negative"], "positive": ["positive"]}
LINEAR = (torch.nn.Linear, Int8Linear)  # dtype="int8" replaces the body's linear layers


def layer_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every matrix product in one transformer block (q, k, v, o, gate, up, down, ...)."""
    for block in model.base_model.modules():
        if isinstance(block, torch.nn.ModuleList):
            first = block[0]
            break
    shapes = [(m.in_features, m.out_features) for m in first.modules() if isinstance(m, LINEAR)]
    shapes += [tuple(m.weight.shape) for m in first.modules() if type(m).__name__ == "Conv1D"]  # GPT-2
    return shapes


def best_rate(products: list[Callable[[], object]], flops: float, repeats: int = 5) -> float:
    """Best GFLOP/s of running ``products`` (``flops`` in all) back to back, 10 times per repeat, hot caches."""
    best = 0.0
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(10):
                for product in products:
                    product()
            best = max(best, 10 * flops / (time.perf_counter() - t) / 1e9)
    return best


def matmul_rate(dtype: torch.dtype, shapes: list[tuple[int, int]], rows: int) -> float:
    """Best GFLOP/s of the given products on ``rows`` tokens."""
    a = {k: torch.randn(rows, k, dtype=dtype) for k, _ in shapes}
    w = [torch.randn(k, n, dtype=dtype) for k, n in shapes]
    return best_rate([partial(torch.matmul, a[k], weight) for (k, _), weight in zip(shapes, w, strict=True)],
                     sum(2 * rows * k * n for k, n in shapes))  # fmt: skip


def int8_rate(shapes: list[tuple[int, int]], rows: int) -> float:
    """Best GFLOP/s of the same products through ``dtype="int8"``'s layer (:class:`verbalize.engine.models.Int8Linear`:
    per-token activation rounding, oneDNN's int8 product, rescaling), counted as 2*rows*in*out FLOPs."""
    a = {k: torch.randn(rows, k) for k, _ in shapes}
    layers = timing_layers(shapes)  # each rounds its own input: the per-layer rate (a block shares 3 of 7)
    return best_rate([partial(layer, a[k]) for (k, _), layer in zip(shapes, layers, strict=True)],
                     sum(2 * rows * k * n for k, n in shapes))  # fmt: skip


def flops_per_text(model: torch.nn.Module, lengths: list[int]) -> float:
    """Matmul FLOPs to score texts of these token lengths: body linears per token, causal attention, output row."""
    cfg = model.config
    body = model.base_model
    linear_macs = sum(m.in_features * m.out_features for m in body.modules() if isinstance(m, LINEAR))
    if linear_macs == 0:  # GPT-2 uses Conv1D modules for its projections
        linear_macs = sum(m.weight.numel() for m in body.modules() if type(m).__name__ == "Conv1D")
    n_layers = cfg.num_hidden_layers
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    vocab_row = model.get_output_embeddings().weight.numel()  # full-vocab normalisation at the last position
    total = 0.0
    for n in lengths:
        attn = n_layers * 2 * d_attn * n * (n + 1) / 2  # QK^T and AV over the causal triangle
        total += 2 * (linear_macs * n + attn + vocab_row)
    return total / len(lengths)


def naive(scorer: Scorer, prompts: list[str], words: list[list[int]]) -> np.ndarray:
    model, tok = scorer.model, scorer.tokenizer
    out = np.zeros((len(prompts), len(words)))
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            ctx = tok(p)["input_ids"]
            for j, w in enumerate(words):
                logp = torch.log_softmax(model(torch.tensor([ctx + w])).logits[0].float(), -1)  # (L, V)
                out[i, j] = sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(w))
    return out


def batched_pairs(scorer: Scorer, prompts: list[str], words: list[list[int]], batch: int = 32) -> np.ndarray:
    model, tok = scorer.model, scorer.tokenizer
    pairs = [(i, j, tok(p)["input_ids"], w) for i, p in enumerate(prompts) for j, w in enumerate(words)]
    out = np.zeros((len(prompts), len(words)))
    with torch.inference_mode():
        for s in range(0, len(pairs), batch):
            chunk = pairs[s : s + batch]
            seqs = [c + w for _, _, c, w in chunk]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), scorer.pad_id)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, seq in enumerate(seqs):
                ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (b, L, V)
            for r, (i, j, c, w) in enumerate(chunk):
                out[i, j] = sum(logp[r, len(c) - 1 + k, t].item() for k, t in enumerate(w))
    return out


PATHS = {
    "model": "logits by the model's own forward at the last positions (default)",
    "hand": "hand path: body + output embedding + known transforms",
    "full": "logits by the model's own forward at every position (fallback)",
}


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def auto_row(args: argparse.Namespace) -> None:
    """``--dtype auto``: the format auto chooses here against float32, same texts, interleaved rounds."""
    from verbalize.engine.machine import describe_cpu

    texts, _ = load("sst2", "test", data_dir(args.data), args.n)
    scorers = {"float32": Scorer.from_pretrained(args.model, "cpu", "float32")}
    scorers["auto"] = Scorer.from_pretrained(args.model, "cpu", "auto")
    choice = scorers["auto"].dtype_choice
    template = load_template(template_path("sst2"))
    prompts, spans = template.spans(texts)
    tokens = template.labels.encode(scorers["float32"].tokenizer, template.label_prefix, template.render(texts[0]))
    for s in scorers.values():
        s.score_words(prompts[:64], tokens, spans[:64])  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in scorers}
    ratios = []
    for _ in range(args.rounds):
        for name, s in scorers.items():
            seconds, _ = timed(lambda s=s: s.score_words(prompts, tokens, spans))
            rates[name].append(len(prompts) / seconds)
        ratios.append(rates["auto"][-1] / rates["float32"][-1])
    print(f"CPU: {describe_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(choice.summary() if choice else f"dtype auto -> {scorers['auto'].dtype} (forced by VERBALIZE_DTYPE)")
    print(f"SST-2: {len(prompts)} texts, shipped template, {args.rounds} interleaved rounds\n")
    print("| dtype | runs in | texts/s (median round) | x float32 (median of per-round ratios) |\n|---|---|---:|---:|")
    for name, s in scorers.items():
        ratio = float(np.median(ratios)) if name == "auto" else 1.0
        print(f"| {name} | {s.dtype} | {np.median(rates[name]):.1f} | {ratio:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--n", "--limit", type=int, default=512, help="texts to score")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="logits paths to time")
    ap.add_argument("--naive-n", type=int, default=63, help="texts for the two naive baselines, spread over the rounds")
    ap.add_argument("--rounds", type=int, default=7, help="rounds of (scorer, matmul rate, naive share)")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "int8", "auto"],
        help="auto: only the table of auto's choice against float32 (bar: >= 3x on a CPU with AMX or AVX-512 BF16)",
    )
    args = ap.parse_args()
    if args.dtype == "auto":
        auto_row(args)
        return

    texts, _ = load("sst2", "test", data_dir(args.data), args.n)
    base = Scorer.from_pretrained(args.model, "cpu", args.dtype)
    scorers = {p: Scorer(base.model, base.tokenizer, logits=p) for p in args.paths}
    scorer = scorers[args.paths[0]]
    template = load_template(template_path("sst2"))
    prompts, spans = template.spans(texts)
    tokens = LabelWords(LABELS).encode(scorer.tokenizer, template.label_prefix, template.render(texts[0]))
    words = [list(w) for w in tokens.word_ids]
    lengths = [len(x) for x in scorer.tokenizer(prompts)["input_ids"]]
    head = len(scorer.tokenizer(template.render("x")[: spans[0][0][0]].rstrip())["input_ids"])

    cfg = scorer.model.config
    dtype = torch.float32 if args.dtype == "int8" else getattr(torch, args.dtype)  # int8: fp32 bound beside
    shapes, rows = layer_shapes(scorer.model), scorer.max_tokens or 1024
    flops = flops_per_text(scorer.model, lengths)
    # The naive baselines read evenly spaced texts (their lengths are those of the whole set), a
    # share in each round, so that they and the scorer sample the same stretch of this CPU's drift.
    sample = np.linspace(0, len(prompts) - 1, min(args.naive_n, len(prompts))).astype(int)
    for s in scorers.values():
        s.score_words(prompts[:64], tokens, spans[:64])  # warm-up
    # This shared CPU's speed drifts by +-20% within minutes, so each round measures the scorer (each
    # path) and the matmul rate back to back, and the ratio is taken per round (median over rounds).
    rounds: dict[str, list[tuple[float, float, float]]] = {p: [] for p in scorers}
    ours: dict[str, np.ndarray] = {}
    ref, ref2 = np.zeros((len(sample), len(words))), np.zeros((len(sample), len(words)))
    slow_time = pairs_time = 0.0
    for r in range(args.rounds):
        rates = {}
        for p, s in scorers.items():
            seconds, ours[p] = timed(lambda s=s: s.score_words(prompts, tokens, spans))
            rates[p] = len(prompts) / seconds
        peak = matmul_rate(dtype, shapes, rows)
        for p, fast in rates.items():
            rounds[p].append((fast / (peak * 1e9 / flops), fast, peak))
        share = np.arange(r, len(sample), args.rounds)
        part = [prompts[i] for i in sample[share]]
        seconds, ref[share] = timed(lambda: naive(scorer, part, words))  # noqa: B023
        slow_time += seconds
        seconds, ref2[share] = timed(lambda: batched_pairs(scorer, part, words))  # noqa: B023
        pairs_time += seconds
    medians = {p: sorted(v)[len(v) // 2] for p, v in rounds.items()}
    ratio, fast, peak = medians[args.paths[0]]
    bound = peak * 1e9 / flops
    square = matmul_rate(dtype, [(2048, 2048)], 2048)
    peak8 = int8_rate(shapes, rows)
    slow, pairs = len(sample) / slow_time, len(sample) / pairs_time

    print(f"model: {cfg.model_type}, {args.dtype}, torch threads: {torch.get_num_threads()}")
    print(
        f"texts: {len(prompts)} SST-2, mean {np.mean(lengths):.1f} prompt tokens, of which the first {head} "
        f"(the template's words before the text) are run once for all; labels {list(LABELS)}"
    )
    print(
        f"rounds of the {args.paths[0]!r} path (scorer texts/s, matmul GFLOP/s, % of bound): "
        + ", ".join(f"({f:.2f}, {p:.1f}, {100 * r:.0f}%)" for r, f, p in rounds[args.paths[0]])
    )
    print(
        f"median round: matmul rate on this model's products ({rows} tokens) {peak:.1f} GFLOP/s "
        f"(2048x2048 square product: {square:.1f} GFLOP/s); FLOP bound {bound:.1f} texts/s; int8 layers "
        f"on the same products {peak8:.1f} GFLOP/s ({peak8 / peak:.2f}x)\n"
    )
    print("| method | texts/s | x naive | % of FLOP bound |")
    print("|---|---:|---:|---:|")
    table = [
        (f"naive: forward per (text, label), batch 1 ({len(sample)} texts)", slow),
        (f"batched (text, label) pairs, lm-eval style ({len(sample)} texts)", pairs),
    ]
    table += [(f"verbalize, {PATHS[p]} (median round)", m[1]) for p, m in medians.items()]
    table.append((f"FLOP bound ({str(dtype).removeprefix('torch.')} matmul peak / FLOPs of these tokens)", bound))
    table.append(("int8 FLOP bound (int8 layers' rate on the same products / the same FLOPs)", peak8 * 1e9 / flops))
    for name, r in table:
        print(f"| {name} | {r:.2f} | {r / slow:.1f} | {100 * r / bound:.0f}% |")
    for p, got in ours.items():
        diff = float(np.abs(np.asarray(got)[sample] - ref).max())
        diff2 = float(np.abs(np.asarray(got)[sample] - ref2).max())
        print(f"{p} path: max |verbalize - naive| log-prob: {diff:.2e}; vs batched pairs: {diff2:.2e}")


if __name__ == "__main__":
    main()
