"""Prompt-based fine-tuning on the tiny models: it learns, it trains what prediction scores, it leaves the
shared base model alone, it is seeded, and the result saves, reloads (also in a new process) and generates."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from verbalize import FineTuneConfig, Head, Verbalizer
from verbalize.engine.batching import Batch, pad_batch
from verbalize.engine.scoring import aggregate, label_logits
from verbalize.prompting.demos import similar_demos
from verbalize.training.lm_mixing import lm_loss, perplexity
from verbalize.training.loop import Objective, _loss, _split

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]
PROMPT = "Review: {text}\nSentiment:"
FAST = dict(epochs=10, learning_rate=1e-3, batch_size=4, validation_fraction=0.0, progress=False)


def make(family, **kw):
    params = dict(template=PROMPT, labels=LABELS, model=family.scorer(), random_state=0) | kw
    return Verbalizer(**params)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fine_tuning_learns_the_training_set_and_leaves_the_shared_model_alone(family):
    before = weights(family.model)
    zero_shot = make(family).score(X, Y)
    clf = make(family, fine_tuning=FineTuneConfig(**FAST)).fit(X, Y)
    assert zero_shot < 1.0 and clf.score(X, Y) == 1.0
    losses = [h["train_loss"] for h in clf.training_.history]
    assert losses[-1] < losses[0] / 4
    after = weights(family.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # trained a copy
    assert clf.scorer_.model is not family.model


def test_training_loss_uses_the_scores_that_prediction_uses(family):
    """The training forward (no prefix cache, gradients on) gives the label scores that label_scores gives."""
    clf = make(family, n_demos=2).fit(X, Y)  # demonstrations make a shared prefix, cached at prediction
    scorer = clf.scorer_
    p = clf._prompts(X)
    ids = scorer.encode(p.prompts, p.spans, p.prefix, 3).ids
    tokens = clf.label_tokens_
    obj = Objective(tokens, tokens.word_label, 2, "logsumexp", np.array([0, 1] * 4))
    rows = np.arange(len(X))
    _, (logits,) = _loss(scorer, ids, rows, obj, scorer.device)
    np.testing.assert_allclose(logits.detach().numpy(), clf.label_scores(X), atol=1e-4)
    # and the torch aggregation equals the numpy one for every rule
    words = torch.randn(5, len(tokens.words), dtype=torch.float64)
    for how in ("logsumexp", "mean", "max"):
        np.testing.assert_allclose(
            label_logits(words, tokens.word_label, 2, how).numpy(),
            aggregate(words.numpy(), tokens.word_label, 2, how),
        )


def test_fine_tuning_is_seeded(gpt2):
    config = FineTuneConfig(**(FAST | dict(epochs=3, validation_fraction=0.25)))
    a = make(gpt2, fine_tuning=config).fit(X, Y).predict_proba(X)
    b = make(gpt2, fine_tuning=config).fit(X, Y).predict_proba(X)
    c = make(gpt2, fine_tuning=config, random_state=1).fit(X, Y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fine_tuning_leaves_the_callers_random_state_alone_and_repeats_with_the_same_random_state(gpt2):
    import random

    config = FineTuneConfig(**(FAST | dict(epochs=2, validation_fraction=0.25, lm_weight=0.5)))
    heads = [Head("joint", training="joint"), Head("probe")]
    results = []
    for caller_seed in (11, 12):  # the caller's own state differs between the two fits
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)  # noqa: NPY002 - the global state the caller may rely on
        random.seed(caller_seed)
        rng, seed = torch.get_rng_state(), torch.random.initial_seed()
        np_rng, py_rng = np.random.get_state(), random.getstate()  # noqa: NPY002
        clf = make(gpt2, heads=heads, fine_tuning=config).fit(X, {"joint": Y, "probe": Y})
        assert torch.equal(torch.get_rng_state(), rng) and torch.random.initial_seed() == seed == caller_seed
        assert random.getstate() == py_rng
        after = np.random.get_state()  # noqa: NPY002
        assert np_rng[0] == after[0] and np.array_equal(np_rng[1], after[1]) and np_rng[2:] == after[2:]
        results.append(clf.predict_proba(X))
    for name in results[0]:  # the same random_state, whatever the caller's state: the same classifier
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_early_stopping_keeps_the_best_epoch(gpt2):
    config = FineTuneConfig(**(FAST | dict(epochs=6, validation_fraction=0.5, patience=1, learning_rate=3e-2)))
    clf = make(gpt2, fine_tuning=config).fit(X, Y)
    hist = clf.training_.history
    best = hist[clf.training_.best_epoch - 1]
    assert best["val_accuracy"] == max(h["val_accuracy"] for h in hist)
    # the model kept is the one of the best epoch: re-scoring the validation split gives its accuracy
    idx = np.array([0, 1] * 4)
    _, val = _split(len(X), idx, 0.5, 0)
    pred = clf.predict([X[i] for i in val])
    assert np.mean(pred == np.array([Y[i] for i in val])) == pytest.approx(best["val_accuracy"])
    assert len(hist) < 6 or clf.training_.best_epoch == 6  # stopped early unless the last epoch was best


PLAIN = ["The team won the game in sports news.", "World leaders met to discuss the economy."]


def test_lm_mixing_with_the_next_token_loss_fits_the_texts(gpt2):
    tok, pad = gpt2.tokenizer, gpt2.scorer().pad_id
    rows = [tok(t)["input_ids"] for t in PLAIN]
    base = perplexity(gpt2.model, rows, pad)
    no_mix = make(gpt2, fine_tuning=FineTuneConfig(**FAST)).fit(X, Y)
    config = FineTuneConfig(**FAST, lm_weight=1.0, lm_loss="nll", lm_texts=tuple(PLAIN))
    mix = make(gpt2, fine_tuning=config).fit(X, Y)
    assert perplexity(mix.scorer_.model, rows, pad) < min(base, perplexity(no_mix.scorer_.model, rows, pad))
    assert mix.score(X, Y) == 1.0


def test_lm_mixing_by_distillation_keeps_the_model_near_the_base(family):
    tok, pad = family.tokenizer, family.scorer().pad_id
    rows = [tok(t)["input_ids"] for t in PLAIN]
    same = lm_loss(family.model, rows, pad, torch.device("cpu"), lambda ids: family.model(input_ids=ids).logits)
    assert float(same) == pytest.approx(0.0, abs=1e-6)  # KL of a model from itself

    def drift(clf):  # mean KL from the base on the plain texts
        base = lambda ids: family.model(input_ids=ids).logits  # noqa: E731
        with torch.no_grad():
            return float(lm_loss(clf.scorer_.model, rows, pad, torch.device("cpu"), base))

    no_mix = make(family, fine_tuning=FineTuneConfig(**FAST)).fit(X, Y)
    mix = make(family, fine_tuning=FineTuneConfig(**FAST, lm_weight=1.0, lm_texts=tuple(PLAIN))).fit(X, Y)
    assert mix.fine_tuning.lm_loss == "distill"  # the default
    assert drift(mix) < drift(no_mix) / 2
    assert mix.score(X, Y) == 1.0


def test_perplexity_matches_the_model_loss(family):
    rows = [family.tokenizer(t)["input_ids"] for t in ("good film and bad film", "a great review")]
    with torch.no_grad():
        losses = [float(family.model(input_ids=torch.tensor([r]), labels=torch.tensor([r])).loss) for r in rows]
    counts = [len(r) - 1 for r in rows]
    want = np.exp(np.dot(losses, counts) / sum(counts))
    assert perplexity(family.model, rows, family.scorer().pad_id) == pytest.approx(want, rel=1e-5)
    batch = pad_batch(rows, np.arange(2), 0)
    assert isinstance(batch, Batch)
    mean_loss = float(lm_loss(family.model, rows, family.scorer().pad_id, torch.device("cpu")))
    assert mean_loss == pytest.approx(np.log(want), rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="LoRA needs the optional peft package")
def test_lora_learns_and_merges_into_a_plain_model(family):
    before = weights(family.model)
    clf = make(family, fine_tuning=FineTuneConfig(**(FAST | dict(method="lora", learning_rate=2e-2)))).fit(X, Y)
    assert clf.score(X, Y) == 1.0
    model = clf.scorer_.model
    assert type(model) is type(family.model)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert set(model.state_dict()) == set(before)
    after = weights(family.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_joint_head_trains_with_the_model(family):
    heads = [Head("sentiment", training="joint"), Head("sentiment2", training="joint", pooling="mean", weight=0.5)]
    config = FineTuneConfig(**(FAST | dict(epochs=20, head_learning_rate=1e-2)))
    clf = make(family, heads=heads, fine_tuning=config).fit(X, {"sentiment": Y, "sentiment2": Y})
    pred = clf.predict(X)
    assert (pred["sentiment"] == np.array(Y)).all() and (pred["sentiment2"] == np.array(Y)).all()
    # the label words were trained too (the first head has the template's labels)
    assert (clf.outputs(X)["labels"].argmax(1) == (np.array(Y) == "positive")).all()


def test_save_reload_in_a_new_process_gives_identical_probabilities(gpt2, tmp_path):
    heads = [Head("joint", training="joint"), Head("probe", pooling="mean")]
    clf = make(gpt2, heads=heads, fine_tuning=FineTuneConfig(**FAST)).fit(X, {"joint": Y, "probe": Y})
    clf.save(tmp_path / "clf")
    want = {k: v.tolist() for k, v in clf.outputs(X).items()}
    script = textwrap.dedent(f"""
        import json, torch
        torch.set_num_threads(1)
        from verbalize import Verbalizer
        clf = Verbalizer.load({str(tmp_path / "clf")!r}, device="cpu")
        print(json.dumps({{k: v.tolist() for k, v in clf.outputs({X!r}).items()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.array(got[k]), np.array(want[k]))


def test_save_pretrained_is_a_hugging_face_model_that_generates(family, tmp_path):
    clf = make(family, fine_tuning=FineTuneConfig(**FAST)).fit(X, Y)
    clf.save_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([family.tokenizer("Review: good film")["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(model(ids).logits.numpy(), clf.scorer_.model(ids).logits.numpy(), atol=1e-5)
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 5)
    # and a classifier can be put on top of that directory without training the LM again
    again = Verbalizer(template=PROMPT, labels=LABELS, model=str(tmp_path / "hf"))
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), atol=1e-5)


def test_fine_tuning_errors_say_what_to_fix(gpt2):
    with pytest.raises(ValueError, match="The 'method' parameter of FineTuneConfig must be one of"):
        FineTuneConfig(method="qlora")
    with pytest.raises(ValueError, match="validation_fraction"):
        FineTuneConfig(validation_fraction=1.5)
    with pytest.raises(ValueError, match="needs labels"):
        make(gpt2, fine_tuning=FineTuneConfig(**FAST)).fit(X)
    with pytest.raises(TypeError, match="FineTuneConfig"):
        make(gpt2, fine_tuning={"epochs": 2}).fit(X, Y)


def test_similar_demonstrations_in_training_prompts_never_show_the_text_itself(gpt2, monkeypatch):
    """With demo_selection="similar", training prompts carry demonstrations, never the text itself."""
    import verbalize.training.finetune as finetune

    seen = {}

    def capture(scorer, ids, *args, **kwargs):
        seen["prompts"] = [scorer.tokenizer.decode(x) for x in ids]
        return real(scorer, ids, *args, **kwargs)

    real = finetune.fine_tune
    monkeypatch.setattr(finetune, "fine_tune", capture)
    cfg = FineTuneConfig(**(FAST | {"epochs": 1}))
    clf = make(gpt2, n_demos=1, demo_selection="similar", fine_tuning=cfg).fit(X, Y)
    others = {x: [(o, y) for o, y in zip(X, Y, strict=True) if o != x] for x in X}
    for text, prompt in zip(X, seen["prompts"], strict=True):
        (demo,) = [others[text][i] for i in similar_demos([o for o, _ in others[text]], [text], 1)[0]]
        assert demo[0] != text
        assert prompt == clf.template_.render(text, [demo])


def test_a_single_class_training_set_is_refused(gpt2):
    with pytest.raises(ValueError, match=r"at least two classes of the template's labels in y; got only 'positive'"):
        make(gpt2, fine_tuning=FineTuneConfig(**FAST)).fit(X[:4], ["positive"] * 4)
    with pytest.raises(ValueError, match=r"at least two classes of head 'topic'"):
        make(gpt2, heads=Head("topic", training="joint"), fine_tuning=FineTuneConfig(**FAST)).fit(X[:4], ["a"] * 4)


def test_a_validation_split_with_one_class_is_reported(gpt2, caplog):
    y = ["positive"] * 7 + ["negative"]  # one negative: the split cannot be stratified
    seed = next(s for s in range(50) if len(set(np.array(y)[_split(8, np.array([1] * 7 + [0]), 0.25, s)[1]])) == 1)
    config = FineTuneConfig(**(FAST | dict(epochs=1, validation_fraction=0.25)))
    with caplog.at_level("WARNING"):
        clf = make(gpt2, fine_tuning=config, random_state=seed).fit(X, y)
    assert clf.training_.validation_classes == 1
    assert "validation split holds 1 class" in caplog.text
