"""Progress on every step that can take more than a few seconds (issue 21, item 4): with ``progress=True`` in the
API and by default in the CLI, on stderr (never stdout); nothing without it.

``fit`` with ``calibration="auto"`` ran 250 s and ``suggest`` 60 s in silence; ``eval --calibration batch``
scored 1,000 extra rows for the calibrator without saying so.
"""

from __future__ import annotations

import json
import logging
import re

from verbalize import FineTuneConfig, Template, Verbalizer, rank_templates
from verbalize.cli.main import main
from verbalize.engine import model_files
from verbalize.progress import enabled, shown, shown_if, stage

LABELS = {"negative": ["bad"], "positive": ["good"]}
PROMPT = "Review: {text}\nSentiment:"
X = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "negative", "positive", "positive", "negative"]
TEMPLATE = 'prompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good"]\n'


def make(gpt2, **kw):
    return Verbalizer(**(dict(template=PROMPT, labels=LABELS, model=gpt2.scorer(batch_size=4)) | kw))


def test_a_stage_says_when_it_starts_and_how_long_it_took_only_when_shown(capsys):
    with stage("converting"):
        pass
    assert capsys.readouterr() == ("", "")
    assert not enabled()
    with shown():
        assert enabled()
        with shown_if(False):  # progress=False leaves the setting around it (the CLI's default) alone
            assert enabled()
        with shown(False):
            assert not enabled()
        with stage("converting"):
            pass
    assert not enabled()
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(r"converting \.\.\.\nconverting: done in \d+ s\n", err)


def test_fit_with_auto_calibration_shows_the_folds_and_the_fit(gpt2, capsys):
    make(gpt2, calibration="auto", random_state=0).fit(X, Y)
    assert capsys.readouterr() == ("", "")  # progress=False: quiet
    make(gpt2, calibration="auto", random_state=0, progress=True).fit(X, Y)
    out, err = capsys.readouterr()
    assert out == ""
    assert "fitting calibration='auto' on 8 texts ..." in err
    assert re.search(r"calibration='auto': cross-validation of \d methods: 100%.*\| 4/4 \[", err), err
    assert re.search(r"fitting calibration='auto' on 8 texts: done in \d+ s", err)


def test_fine_tuning_shows_the_epoch(gpt2, capsys):
    config = FineTuneConfig(epochs=2, batch_size=4, validation_fraction=0.25, progress=True)
    make(gpt2, fine_tuning=config, random_state=0).fit(X, Y)
    err = capsys.readouterr().err
    assert "fine-tuning, epoch 1/2" in err and "fine-tuning, epoch 2/2" in err
    assert "val_accuracy=" in err  # the previous epoch's, through the next one


def test_rank_templates_says_which_prompt_it_searches(gpt2, capsys):
    tpl = Template(prompt=PROMPT, labels=LABELS)
    rank_templates(X, Y, tpl, gpt2.scorer(), prompts=["Text: {text}\nLabel:"], cv=2, n_words=(1,), progress=True)
    err = capsys.readouterr().err
    assert "searching label words for prompt 1 of 2: 'Review: {text}\\nSentiment:' ..." in err
    assert "searching label words for prompt 2 of 2" in err and "scoring" in err


def test_a_cold_conversion_is_a_stage_with_progress_and_a_warning_without(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("VERBALIZE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))

    def dequantize(path, target):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(model_files, "_dequantize", dequantize)
    with shown():
        model_files.convert_gguf(gguf)
    assert re.search(r"converting m\.gguf to safetensors once .*: done in \d+ s", capsys.readouterr().err)
    for f in (tmp_path / "cache").iterdir():
        (f / "config.json").unlink()
        f.rmdir()
    with caplog.at_level(logging.WARNING, logger="verbalize"):
        model_files.convert_gguf(gguf)
    assert capsys.readouterr().err == ""
    assert [r.getMessage()[:24] for r in caplog.records] == ["converting m.gguf to saf"]


def test_eval_says_it_scores_rows_to_fit_the_calibrator_and_shows_the_rows(tmp_path, model_dir, capsys):
    (tmp_path / "t.toml").write_text(TEMPLATE)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(X, Y, strict=True)))
    args = ["eval", str(tmp_path / "t.toml"), str(data), "--model", model_dir, "--calibration", "batch"]
    assert main([*args, "--no-progress"]) == 0
    quiet = capsys.readouterr()
    assert "fitting" not in quiet.err and "%|" not in quiet.err
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out == quiet.out  # progress never goes to stdout
    assert "fitting calibration='batch' on 8 texts ..." in err
    assert re.search(r"scoring: 100%.*\| \d+/\d+ \[", err), err  # the calibrator's texts, counted
    assert re.search(r"eval: 100%.*\| 8/8 \[", err), err


def test_predict_shows_no_scoring_bar_for_a_calibration_fitted_at_its_first_call(tmp_path, model_dir, capsys):
    """Progress shows for fitting; contextual calibration fitted on its first predict (the CLI's probe) is not a
    long step, and the job's own bar counts the rows: no extra 'scoring' bar beside it."""
    (tmp_path / "t.toml").write_text(TEMPLATE)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(X) + "\n")
    args = ["predict", str(tmp_path / "t.toml"), str(src), "--model", model_dir, "--calibration", "contextual"]
    assert main([*args, "-o", str(tmp_path / "out.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "scoring:" not in err, err
    assert re.search(r"100%.*\| 8/8 \[", err), err
