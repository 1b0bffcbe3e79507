"""``--threads N`` on every command that runs the model, a default that leaves the busy CPUs alone, and a refusal
of more threads than CPUs, with the numbers (issue 21, item 5)."""

from __future__ import annotations

import json

import pytest
import torch

from verbalize.cli import threads as cli_threads
from verbalize.cli.main import _parser, main

TEMPLATE = 'prompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good"]\n'
COMMANDS = {
    "predict": ["predict", "t.toml", "in.txt"],
    "eval": ["eval", "t.toml", "data.jsonl"],
    "finetune": ["finetune", "t.toml", "train.jsonl", "-o", "out"],
    "suggest": ["suggest", "t.toml", "data.jsonl"],
    "serve": ["serve", "t.toml"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_that_runs_the_model_takes_threads(command, capsys):
    args = _parser().parse_args([*COMMANDS[command], "--threads", "1"])
    assert args.threads == 1
    assert _parser().parse_args(COMMANDS[command]).threads is None  # the default, computed when the command runs
    with pytest.raises(SystemExit):
        _parser().parse_args([command, "--help"])
    assert "1-minute load average" in capsys.readouterr().out  # --help says what the default is


def test_more_threads_than_cpus_are_refused_with_the_numbers(monkeypatch, capsys):
    monkeypatch.setattr(cli_threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.raises(SystemExit) as done:
        main([*COMMANDS["predict"], "--threads", "3"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "3 threads, but this process may use 2 CPUs" in err and "--threads 2 or fewer" in err
    with pytest.raises(SystemExit):
        main([*COMMANDS["eval"], "--threads", "0"])
    assert "must be an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(("load", "want"), [(0.0, 8), (2.4, 6), (5.6, 2), (7.9, 1), (30.0, 1)])
def test_the_default_is_the_cpus_less_the_load_at_least_one(monkeypatch, load, want):
    monkeypatch.setattr(cli_threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cli_threads.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert cli_threads.default_threads() == want


def test_eval_runs_with_the_threads_asked_for(tmp_path, monkeypatch, gpt2_model, gpt2_tokenizer, capsys):
    gpt2_model.save_pretrained(tmp_path / "model")
    gpt2_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "t.toml").write_text(TEMPLATE)
    rows = [{"text": "good film", "label": "positive"}, {"text": "bad film", "label": "negative"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main([*COMMANDS["eval"], "--model", "model", "--threads", "1"]) == 0
    assert calls == [1]
    assert "accuracy=" in capsys.readouterr().out
