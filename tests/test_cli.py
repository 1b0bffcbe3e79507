"""`verbalize check | predict | eval` on temporary files and a tiny GPT-2 saved to a local directory."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verbalize.cli.main import main

TEMPLATE = """
name = "t"
prompt = "Review: {text}\\nSentiment:"
[labels]
negative = ["bad", "negative"]
positive = ["good", "positive"]
"""


def test_check_prints_prompt_and_tokens(tmp_template, model_dir, capsys):
    code = main(["check", str(tmp_template(TEMPLATE)), "--model", model_dir])
    out = capsys.readouterr().out
    assert code == 0
    assert '"Review: A charming and funny film.\\nSentiment:"' in out
    assert "'good'" in out and "->" in out and "ok: no problems found" in out


def test_check_reports_every_problem_with_file_and_key(tmp_template, model_dir, capsys):
    bad = tmp_template('prompt = "Review: {txt} "\nlabel_prefx = " "\n[labels]\na = ["x"]\nb = ["x"]\n')
    code = main(["check", str(bad), "--model", model_dir])
    err = capsys.readouterr().err
    assert code == 2
    for key in (
        "label_prefx: unknown key",
        "prompt: unknown placeholder {txt}",
        "prompt: ends with whitespace",
        "labels.b: word 'x' also appears under labels.a",
    ):
        assert f"{bad}: {key}" in err, key


def test_predict_jsonl_keeps_good_rows_when_some_are_bad(tmp_path, tmp_template, model_dir, capsys):
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": 1, "text": "good film"},
        {"id": 2, "text": "  "},
        {"id": 3, "text": None},
        {"id": 4, "text": "bad {text} film"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "out.jsonl"
    code = main(["predict", str(tmp_template(TEMPLATE)), str(src), "--output", str(out), "--model", model_dir])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1 and len(got) == 5
    assert [r.get("id") for r in got[:4]] == [1, 2, 3, 4]
    assert got[0]["prediction"] in ("negative", "positive") and 0.5 <= got[0]["probability"] <= 1
    assert got[3]["prediction"] in ("negative", "positive")
    assert "empty" in got[1]["error"] and "missing" in got[2]["error"] and "not valid JSON" in got[4]["error"]
    assert "3 of 5 rows could not be classified" in capsys.readouterr().err


def test_predict_csv_and_plain_text(tmp_path, tmp_template, model_dir, capsys):
    src = tmp_path / "in.csv"
    src.write_text("review,stars\ngood film,5\nbad film,1\n")
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_template(TEMPLATE)), str(src), "-o", str(out), "--model", model_dir]) == 0
    got = list(csv.DictReader(out.open()))
    assert [r["stars"] for r in got] == ["5", "1"] and all(r["prediction"] for r in got)
    txt = tmp_path / "in.txt"
    txt.write_text("good film\nbad film\n")
    assert main(["predict", str(tmp_template(TEMPLATE)), str(txt), "--model", model_dir]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(x)["text"] for x in lines] == ["good film", "bad film"]


def test_predict_errors_are_explained(tmp_path, tmp_template, model_dir, capsys):
    assert main(["predict", str(tmp_path / "missing.toml"), "x.txt", "--model", model_dir]) == 2
    assert "not found" in capsys.readouterr().err
    src = tmp_path / "in.csv"
    src.write_text("body\nhello\n")
    assert main(["predict", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir]) == 2
    assert "no text column" in capsys.readouterr().err


def test_eval_prints_accuracy(tmp_path, tmp_template, model_dir, capsys):
    src = tmp_path / "data.jsonl"
    src.write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": "negative"}\n')
    assert main(["eval", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir]) == 0
    assert "accuracy=" in capsys.readouterr().out


def test_finetune_trains_saves_and_predict_uses_the_saved_classifier(tmp_path, tmp_template, model_dir, capsys):
    train = tmp_path / "train.jsonl"
    good = [("good film", "positive"), ("bad film", "negative"), ("good good", "positive"), ("bad bad", "negative")]
    lines = [json.dumps({"text": t, "label": y}) for t, y in good * 2]
    lines += [json.dumps({"text": "", "label": "positive"}), json.dumps({"text": "ok", "label": "neutral"})]
    train.write_text("\n".join(lines) + "\n")
    out = tmp_path / "clf"
    args = ["finetune", str(tmp_template(TEMPLATE)), str(train), "--output", str(out), "--model", model_dir]
    code = main([*args, "--epochs", "10", "--learning-rate", "1e-3", "--validation-fraction", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # two rows were skipped, and each is reported; the others were used
    assert "line 9: text is empty" in captured.err and "line 10: label 'neutral' is not one of" in captured.err
    assert "fine-tuned on 8 rows" in captured.out
    assert (out / "verbalize.json").is_file() and (out / "model" / "config.json").is_file()
    src = tmp_path / "in.txt"
    src.write_text("good film\nbad film\n")
    assert main(["predict", str(out), str(src)]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["prediction"] for r in got] == ["positive", "negative"]


def test_check_loads_the_tokenizer_only(tmp_template, model_dir, monkeypatch, capsys):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("verbalize check must not load model weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    assert main(["check", str(tmp_template(TEMPLATE)), "--model", model_dir]) == 0
    out = capsys.readouterr().out
    assert "ok: no problems found" in out and "of model" in out and "64 tokens" in out  # tiny GPT-2: n_positions 64


def test_check_finds_a_shipped_template_by_name(model_dir, capsys):
    assert main(["check", "sst2", "--model", model_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith("template: ") and out.splitlines()[0].split()[1].endswith("sst2.toml")
    assert main(["check", "sst", "--model", model_dir]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'sst2'?" in err and "agnews" in err and "trec" in err


def test_check_refuses_an_instruction_longer_than_the_context_window(tmp_template, model_dir, capsys):
    long = "Read the review and answer with one word. " * 20  # far more than the tiny model's 64 positions
    path = tmp_template(f'instruction = "{long.strip()}"\n' + TEMPLATE)
    assert main(["check", str(path), "--model", model_dir]) == 1
    captured = capsys.readouterr()
    assert "context window of 64" in captured.err and "shorten the instruction" in captured.err
    assert "ok: no problems found" not in captured.out


def _labeled(tmp_path, texts, labels):
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
    return str(src)


EVAL_TEXTS = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good"]
LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}


def _naive_predictions(gpt2_model, gpt2_tokenizer, calibrated):
    import numpy as np
    import reference

    prompts = [f"Review: {t}\nSentiment:" for t in EVAL_TEXTS]
    scores = reference.label_scores(gpt2_model, gpt2_tokenizer, prompts, LABELS)
    if calibrated:  # batch calibration (Zhou et al. 2024): the prior is the mean probability over the texts
        scores = reference.prior_corrected(scores, scores)
    return [list(LABELS)[i] for i in np.argmax(scores, axis=1)]


def _accuracy(out):
    line = [x for x in out.splitlines() if x.startswith("n=")][-1]
    fields = dict(f.split("=") for f in line.split())
    return int(fields["n"]), float(fields["accuracy"])


def test_eval_limit_uses_the_first_rows_only(tmp_path, tmp_template, model_dir, gpt2_model, gpt2_tokenizer, capsys):
    pred = _naive_predictions(gpt2_model, gpt2_tokenizer, calibrated=False)
    flip = {"negative": "positive", "positive": "negative"}
    labels = pred[:3] + [flip[p] for p in pred[3:]]  # right on the first 3 rows, wrong on the rest
    data = _labeled(tmp_path, EVAL_TEXTS, labels)
    assert main(["eval", str(tmp_template(TEMPLATE)), data, "--model", model_dir, "--limit", "3"]) == 0
    assert _accuracy(capsys.readouterr().out) == (3, 1.0)
    assert main(["eval", str(tmp_template(TEMPLATE)), data, "--model", model_dir]) == 0
    assert _accuracy(capsys.readouterr().out) == (6, 0.5)


def test_eval_calibration_is_applied(tmp_path, tmp_template, model_dir, gpt2_model, gpt2_tokenizer, capsys):
    raw = _naive_predictions(gpt2_model, gpt2_tokenizer, calibrated=False)
    cal = _naive_predictions(gpt2_model, gpt2_tokenizer, calibrated=True)
    assert raw != cal  # binary batch calibration flips every text whose p(positive) is below the mean
    data = _labeled(tmp_path, EVAL_TEXTS, cal)  # labels: what batch calibration predicts
    args = ["eval", str(tmp_template(TEMPLATE)), data, "--model", model_dir]
    assert main([*args, "--calibration", "batch"]) == 0
    assert _accuracy(capsys.readouterr().out) == (6, 1.0)
    assert main(args) == 0
    agree = sum(a == b for a, b in zip(raw, cal, strict=True)) / len(raw)
    assert _accuracy(capsys.readouterr().out) == (6, round(agree, 4))


def test_setup_errors_exit_2_once_before_any_row(tmp_path, tmp_template, model_dir, capsys):
    src = tmp_path / "in.txt"
    src.write_text("good film\nbad film\n")
    tpl = str(tmp_template(TEMPLATE))
    out = tmp_path / "out.jsonl"
    base = ["predict", tpl, str(src), "--model", model_dir]
    assert main([*base, "-o", str(out), "--calibration", "contextal"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Did you mean 'contextual'" in err and not out.exists()
    assert main([*base, "-o", str(tmp_path / "nodir" / "out.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([*base, "--batch-size", "0"])
    assert stop.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    broken = tmp_template('prompt = "Review: {txt}"\n[labels]\na = ["x"]\n', name="broken.toml")
    assert main(["predict", str(broken), str(empty), "--model", model_dir]) == 2
    assert "unknown placeholder {txt}" in capsys.readouterr().err
    long = tmp_template(TEMPLATE.replace('name = "t"', f'instruction = "{"many words here " * 60}"'), name="long.toml")
    assert main(["predict", str(long), str(src), "--model", model_dir, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "the template alone takes" in err and not out.exists()


def test_saved_classifier_refuses_model_and_calibration(tmp_path, tmp_template, model_dir, gpt2_model, gpt2_tokenizer):
    from verbalize import Scorer, Verbalizer

    saved = tmp_path / "clf"
    Verbalizer(template=str(tmp_template(TEMPLATE)), model=Scorer(gpt2_model, gpt2_tokenizer)).save(saved)
    src = tmp_path / "data.jsonl"
    src.write_text('{"text": "good", "label": "positive"}\n')
    for cmd in (["predict", str(saved), str(src)], ["eval", str(saved), str(src)]):
        assert main([*cmd, "--calibration", "contextual"]) == 2
        assert main([*cmd, "--model", model_dir]) == 2


def test_eval_skips_a_bad_row_like_predict(tmp_path, tmp_template, model_dir, capsys):
    src = tmp_path / "data.jsonl"
    src.write_text(
        '{"text": "good", "label": "positive"}\n{"text": "", "label": "negative"}\n'
        '{"text": "bad", "label": "negative"}\n'
    )
    assert main(["eval", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir]) == 1
    captured = capsys.readouterr()
    assert "n=2  accuracy=" in captured.out and "skipped line 2: text is empty" in captured.err


def test_finetune_output_is_checked_before_training(tmp_path, tmp_template, model_dir, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "good", "label": "positive"}\n')
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["finetune", str(tmp_template(TEMPLATE)), str(train), "-o", str(taken), "--model", model_dir]) == 2
    assert "is a file" in capsys.readouterr().err


# Run as the CLI process of the SIGTERM test: the first chunk and its state are written, then the run waits
# (in the scoring of the second chunk) until the test has sent its signal, so the signal always comes mid-run.
_GATED_CLI = """
import sys

import verbalize.io.jobs as jobs
from verbalize.cli.main import main

original, calls = jobs.classify_rows, []


def gated(clf, chunk):
    calls.append(len(chunk))
    if len(calls) == 2:
        print("first chunk written", flush=True)
        sys.stdin.readline()  # the test sends SIGTERM while the run waits here, then closes stdin
    return original(clf, chunk)


jobs.classify_rows = gated
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_cleanly_and_resume_gives_the_same_bytes(tmp_path, tmp_template, model_dir):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    src = tmp_path / "in.txt"
    src.write_text("".join(f"film number {i} was {'good' if i % 3 else 'bad'}\n" for i in range(80)))
    tpl = str(tmp_template(TEMPLATE))
    args = ["predict", tpl, str(src), "--model", model_dir, "--chunk-size", "16", "--no-progress"]
    whole = tmp_path / "whole.jsonl"
    assert main([*args, "-o", str(whole)]) == 0
    out, gated, err = tmp_path / "out.jsonl", tmp_path / "gated_cli.py", tmp_path / "stderr.txt"
    gated.write_text(_GATED_CLI)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    with err.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, str(gated), *args, "-o", str(out)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
        try:
            lines = iter(proc.stdout.readline, "")  # type: ignore[union-attr]
            assert "first chunk written\n" in lines, err.read_text()  # read until the marker (or the end)
            state = json.loads((tmp_path / "out.jsonl.partial" / "state.json").read_text())
            assert state["rows_done"] == 16 and not state["complete"]
            proc.send_signal(signal.SIGTERM)  # the run is waiting inside its second chunk: it cannot finish first
            proc.stdin.close()  # type: ignore[union-attr]  # a run that ignored the signal would go on to the end
            returncode = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
    text = err.read_text()
    assert returncode == 128 + signal.SIGTERM and "Traceback" not in text and "--resume" in text, text
    assert not out.exists()
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert out.read_bytes() == whole.read_bytes()


def test_eval_calibration_auto_is_fitted_on_the_input_and_none_means_none(
    tmp_path, tmp_template, model_dir, gpt2_model, gpt2_tokenizer, capsys
):
    """`--calibration auto` once ran with no calibration at all (the CLI never fitted it); without labels it
    is batch calibration fitted on the input's texts. `--calibration none` is the same as no flag."""
    raw = _naive_predictions(gpt2_model, gpt2_tokenizer, calibrated=False)
    cal = _naive_predictions(gpt2_model, gpt2_tokenizer, calibrated=True)
    data = _labeled(tmp_path, EVAL_TEXTS * 2, cal * 2)  # 12 texts: auto needs 8 unlabeled texts or more
    args = ["eval", str(tmp_template(TEMPLATE)), data, "--model", model_dir]
    assert main([*args, "--calibration", "auto"]) == 0
    assert _accuracy(capsys.readouterr().out) == (12, 1.0)
    assert main([*args, "--calibration", "none"]) == 0
    agree = sum(a == b for a, b in zip(raw, cal, strict=True)) / len(raw)
    assert _accuracy(capsys.readouterr().out) == (12, round(agree, 4))


def test_resume_with_another_dtype_is_refused_naming_it(tmp_path, tmp_template, model_dir, monkeypatch, capsys):
    """A resumed job must not append rows scored with other weights (int8, bfloat16) to float32 ones."""
    import signal

    from verbalize.io import jobs

    src = tmp_path / "in.txt"
    src.write_text("".join(f"film number {i} was {'good' if i % 3 else 'bad'}\n" for i in range(12)))
    out = tmp_path / "out.jsonl"
    args = ["predict", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir, "--chunk-size", "4", "-o", str(out)]
    classify, calls = jobs.classify_rows, []

    def interrupted_after_one_chunk(clf, rows):
        calls.append(rows)
        if len(calls) > 1:
            raise jobs.Interrupted(signal.SIGINT)
        return classify(clf, rows)

    monkeypatch.setattr(jobs, "classify_rows", interrupted_after_one_chunk)
    assert main([*args, "--no-progress"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--no-progress", "--dtype", "bfloat16", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "dtype: 'float32' then, 'bfloat16' now" in err and "--dtype float32" in err and not out.exists()
    assert main([*args, "--no-progress", "--dtype", "float32", "--resume"]) == 0  # the original dtype continues
    assert len(out.read_text().splitlines()) == 12


@pytest.mark.parametrize("name", ["preds.xlsx", "preds.txt", "preds.json"])
def test_predict_refuses_an_output_format_it_cannot_write(tmp_path, tmp_template, model_dir, capsys, name):
    """`-o preds.xlsx` wrote JSONL into a file named .xlsx."""
    src = tmp_path / "in.txt"
    src.write_text("good film\nbad film\n")
    out = tmp_path / name
    assert main(["predict", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{Path(name).suffix}" in err and ".jsonl" in err and ".parquet" in err
    assert not out.exists()


def test_predict_refuses_to_write_over_its_input(tmp_path, tmp_template, model_dir, capsys):
    src = tmp_path / "texts.jsonl"
    src.write_text(json.dumps({"text": "good film"}) + "\n")
    before = src.read_bytes()
    assert main(["predict", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir, "-o", str(src)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_version_flag_prints_the_package_version(capsys):
    import verbalize

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"verbalize {verbalize.__version__}"


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "verbalize.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=False, text=True, timeout=120, **kw)


def test_a_closed_pipe_or_a_full_disk_on_stdout_ends_with_one_line_not_a_traceback(tmp_path, tmp_template, model_dir):
    """`verbalize predict ... | head -1` printed a BrokenPipeError traceback; stdout on a full disk a raw OSError."""
    src = tmp_path / "in.txt"
    src.write_text("good film\n" * 3000)
    args = ["predict", str(tmp_template(TEMPLATE)), str(src), "--model", model_dir, "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "verbalize.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and json.loads(proc.stdout.readline())["prediction"]
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=120) != 0
    assert "Traceback" not in err, err[-2000:]
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            done = _cli(args, stdout=full, stderr=subprocess.PIPE)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "No space left" in done.stderr


def test_finetune_says_one_epoch_not_one_epochs(tmp_path, tmp_template, model_dir, capsys):
    train = tmp_path / "train.jsonl"
    rows = [("good film", "positive"), ("bad film", "negative")] * 2
    train.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    args = [
        "finetune",
        str(tmp_template(TEMPLATE)),
        str(train),
        "--output",
        str(tmp_path / "clf"),
        "--model",
        model_dir,
    ]
    assert main([*args, "--epochs", "1", "--validation-fraction", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(1 epoch, best epoch 1" in out and "epochs" not in out
