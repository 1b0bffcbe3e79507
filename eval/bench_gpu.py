"""Scoring throughput on a GPU (or any device): the embedded model and Llama-shaped random models, beside HFLM.

    python eval/bench_gpu.py --data ../shared/data                       # cuda: embedded, llama-1b, llama-8b
    python eval/bench_gpu.py --data ../shared/data --models embedded --hflm   # with lm-eval's HFLM beside it
    python eval/bench_gpu.py --data ../shared/data --device cpu --n 64   # a check on CPU: embedded, llama-tiny

For each model: SST-2 texts (first --n) with the shipped template through verbalize's ``Scorer`` at
--batch prompts per forward in --dtype (bfloat16 by default, residual stream widened as
``dtype="bfloat16"`` does; SDPA attention), and, with --hflm, the same model object through
lm-evaluation-harness's ``HFLM`` (``loglikelihood`` requests, one per text and label word, its batch
= --batch). Rounds alternate the two; texts/s are medians over rounds. Speed does not need trained
weights: ``llama-1b`` and ``llama-8b`` are randomly initialised with the shapes of Llama 3.2 1B and
Llama 3.1 8B (vocabulary 128256), fed the embedded tokenizer's ids.

"% of bound": the FLOPs the texts need (every prompt token through the body's matrices, causal
attention, the output layer at one position per text) at the measured texts/s, divided by the
device's own matrix-product rate in --dtype (the best of 10 products of 8192 x 8192 x 8192 on a GPU,
2048 on a CPU). "max |d log p|": over 16 texts and every label word, verbalize's scores against the
model's own forward on each whole prompt (one sequence at a time, full logits), in the same format.
The model zoo's exactness on CUDA is ``pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from bench_peers import lm_eval_scores
from bench_speed import flops_per_text
from data import data_dir, load, template_path

from verbalize import Scorer, load_template
from verbalize.engine.machine import describe_cpu
from verbalize.engine.model_files import load_tokenizer
from verbalize.engine.models import finish_narrow, load_model

SHAPES: dict[str, dict[str, Any]] = {
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "llama-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "llama-tiny": dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}  # fmt: skip
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build(name: str, device: torch.device, dtype: str, tokenizer: Any) -> Any:
    """The embedded model, or a random Llama of one of :data:`SHAPES`, on ``device`` in ``dtype``."""
    if name == "embedded":
        model, _ = load_model(None, device=str(device), dtype=dtype)
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = 128256 if name != "llama-tiny" else len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab, max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **SHAPES[name],
    )  # fmt: skip
    with torch.random.fork_rng(), default_dtype(DTYPES[dtype]), device:  # weights made on the device, in dtype
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    finish_narrow(model, dtype)
    return model


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of this device's square matrix products in ``dtype`` (best of 10)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(11):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def own_scores(model: Any, contexts: list[list[int]], word_ids: Any) -> np.ndarray:
    """log p(first token of each word | context) from the model's own forward on each whole prompt."""
    device = next(model.parameters()).device
    first = [ids[0] for ids in word_ids]
    out = []
    for ctx in contexts:
        logits = model(input_ids=torch.tensor([ctx], device=device)).logits[0, -1].float()
        out.append(torch.log_softmax(logits, -1)[first].double().cpu().numpy())
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--models", nargs="+", choices=["embedded", *SHAPES], help="default: embedded llama-1b llama-8b on a GPU; "
        "embedded llama-tiny on a CPU (an 8B model in bfloat16 takes 16 GB)",
    )  # fmt: skip
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--n", type=int, default=1024, help="SST-2 test texts")
    ap.add_argument("--batch", type=int, default=64, help="prompts per forward (both systems)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hflm", action="store_true", help="time lm-eval's HFLM on the same model object")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    models = args.models or (["embedded", "llama-1b", "llama-8b"] if gpu else ["embedded", "llama-tiny"])
    texts, _ = load("sst2", "test", data_dir(args.data), args.n)
    template = load_template(template_path("sst2"))
    tokenizer = load_tokenizer(None)  # the embedded model's; the random models read its ids
    prefix = template.prefix([])
    prompts, spans = template.spans(texts)
    tokens = template.labels.encode(tokenizer, template.label_prefix, template.render(texts[0]))
    word_ids = tokens.word_ids
    contexts = [prefix + p for p in prompts]
    context_ids = [tokenizer(c)["input_ids"] for c in contexts]
    continuations = [template.label_prefix + w for ws in template.labels.values() for w in ws]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {describe_cpu()}"
    rate = matmul_rate(device, DTYPES[args.dtype])
    print(f"{where}; torch {torch.__version__}; {args.dtype} matrix products: {rate / 1e12:.1f} TFLOP/s")
    print(f"SST-2: {len(texts)} texts, shipped template, {len(word_ids)} label words, batch {args.batch}\n")
    rows = []
    for name in models:
        model = build(name, device, args.dtype, tokenizer)
        scorer = Scorer(model, tokenizer, batch_size=args.batch)
        lm = None
        if args.hflm:
            from lm_eval.models.huggingface import HFLM

            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch, device=str(device))
        scorer.score_words(prompts[:16], tokens, spans[:16], prefix)  # warm-up
        ours_rates, theirs_rates = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            ours = scorer.score_words(prompts, tokens, spans, prefix)
            ours_rates.append(len(texts) / (time.perf_counter() - t))
            if lm is not None:
                t = time.perf_counter()
                lm_eval_scores(lm, contexts, continuations)
                theirs_rates.append(len(texts) / (time.perf_counter() - t))
        ours_rate = float(np.median(ours_rates))
        theirs = float(np.median(theirs_rates)) if theirs_rates else float("nan")
        error = float(np.abs(ours[:16] - own_scores(model, context_ids[:16], word_ids)).max())
        achieved = flops_per_text(model, [len(c) for c in context_ids]) * ours_rate
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, params, ours_rate, theirs, ours_rate / theirs, achieved, achieved / rate, error))
        del model, scorer, lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("| model | parameters | verbalize texts/s | HFLM texts/s | x HFLM | TFLOP/s | % of bound | max abs d log p |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, params, ours_rate, theirs, ratio, achieved, share, error in rows:
        print(
            f"| {name} | {params / 1e9:.2f}B | {ours_rate:.1f} | {theirs:.1f} | {ratio:.2f} | {achieved / 1e12:.2f} "
            f"| {100 * share:.0f}% | {error:.3f} |"
        )


if __name__ == "__main__":
    main()
