"""`finetune --output` never replaces a fine-tuned classifier silently; `check` / `finetune` say what they take
(issue 21, items 2 and 7)."""

from __future__ import annotations

import json

import pytest

from verbalize.cli.main import main

TEMPLATE = 'name = "t"\nprompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good"]\n'


def _train(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [("good film", "positive"), ("bad film", "negative")] * 2
    train.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return str(train)


def test_finetune_refuses_to_replace_a_classifier_without_force(tmp_path, tmp_template, model_dir, capsys):
    out = tmp_path / "clf"
    args = ["finetune", str(tmp_template(TEMPLATE)), _train(tmp_path), "--output", str(out), "--model", model_dir]
    args += ["--epochs", "1", "--validation-fraction", "0", "--no-progress"]
    assert main(args) == 0
    state = (out / "verbalize.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--output {out} holds a fine-tuned classifier already; pass --force" in err, err
    assert (out / "verbalize.json").read_bytes() == state
    assert main([*args, "--force", "--seed", "1"]) == 0
    assert (out / "verbalize.json").is_file()


def test_check_and_finetune_refuse_a_saved_directory_naming_what_they_take(tmp_path, tmp_template, capsys):
    saved = tmp_path / "clf"
    saved.mkdir()
    (saved / "verbalize.json").write_text("{}")
    assert main(["check", str(saved)]) == 2
    err = capsys.readouterr().err
    assert "is a saved classifier directory; verbalize check takes a template file" in err, err
    assert main(["finetune", str(saved), _train(tmp_path), "--output", str(tmp_path / "new")]) == 2
    assert "verbalize finetune takes a template file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["check", "finetune"])
def test_help_of_check_and_finetune_does_not_offer_a_classifier_directory(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "template file (TOML) or shipped template name" in out and "classifier directory" not in out
