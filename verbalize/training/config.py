"""FineTuneConfig: how ``Verbalizer.fit`` trains the language model (a frozen dataclass, checked on creation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from verbalize.errors import check_choice, choice_problem, number_problem, raise_problems

METHODS = ("full", "lora")
LM_LOSSES = ("distill", "nll")
CHOICES = (("method", METHODS), ("lm_loss", LM_LOSSES))
POSITIVE_INTS = ("epochs", "batch_size", "lm_max_tokens", "lora_r")
NON_NEGATIVE = ("prompt_weight", "lm_weight", "weight_decay", "warmup_ratio")


@dataclass(frozen=True)
class FineTuneConfig:
    """How ``Verbalizer.fit`` trains the language model.

    Parameters
    ----------
    method : {"full", "lora"}, default "full"
        Train every weight, or low-rank adapters (needs the optional ``peft`` package:
        ``pip install "verbalize[peft]"``); adapters are merged into the weights after training, so
        the result is a plain model of the same architecture.
    epochs : int, default 8
        Most passes over the training examples.
    learning_rate : float, optional
        Default 2e-5 for full fine-tuning, 5e-4 for LoRA.
    batch_size : int, default 8
    validation_fraction : float, default 0.2
        Share of the examples (stratified) held out to pick the best epoch and stop early; 0 trains
        on everything for ``epochs`` epochs.
    patience : int, default 2
        Epochs without a better validation result before stopping.
    weight_decay, warmup_ratio, max_grad_norm : AdamW decay, share of steps with a linear warm-up, clipping.
    prompt_weight : float, default 1.0
        Weight of the label-word loss (0 trains the joint heads only).
    lm_weight : float, default 0.0
        Weight of the language-modeling loss (see ``lm_loss``) on ``lm_texts`` (or on the training
        texts), mixed into every step so that generation does not degrade. 0 turns mixing off.
    lm_texts : sequence of str, optional
        Unlabeled plain text for the LM loss; default: the training texts.
    lm_loss : {"distill", "nll"}, default "distill"
        ``"distill"``: the KL divergence from the model's own next-token distribution before
        fine-tuning, on ``lm_texts``; it holds generation where it was whatever the texts' domain
        (one more forward per step; with full fine-tuning, a frozen copy of the model in memory).
        ``"nll"``: the ordinary next-token cross-entropy on ``lm_texts``; the model then also adapts
        to their domain, which can raise perplexity elsewhere (measured in ``eval/generation.py``:
        +31% on AG News after SST-2 at lr 1e-4, against -0.6% with ``"distill"``).
    lm_max_tokens : int, default 128
        Tokens kept of each LM text.
    lora_r, lora_alpha, lora_dropout, lora_target_modules : LoRA's rank, scale, dropout, target layers.
    head_learning_rate : float, default 1e-3
        Learning rate of jointly trained heads (new layers start from scratch and need a larger one).
    progress : bool, default True
        Show a progress bar over the training steps.
    """

    method: str = "full"
    epochs: int = 8
    learning_rate: float | None = None
    batch_size: int = 8
    validation_fraction: float = 0.2
    patience: int = 2
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    prompt_weight: float = 1.0
    lm_weight: float = 0.0
    lm_texts: tuple[str, ...] | None = None
    lm_loss: str = "distill"
    lm_max_tokens: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    head_learning_rate: float = 1e-3
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lm_texts is not None:
            object.__setattr__(self, "lm_texts", tuple(self.lm_texts))
        if not isinstance(self.lora_target_modules, str):
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        owner = "FineTuneConfig"
        problems = [choice_problem(getattr(self, n), allowed, n, owner) for n, allowed in CHOICES]
        problems.append(number_problem(self.validation_fraction, "validation_fraction", owner, 0, 1, high_open=True))
        problems += [number_problem(getattr(self, n), n, owner, 1, integer=True) for n in POSITIVE_INTS]
        problems += [number_problem(getattr(self, n), n, owner, 0) for n in NON_NEGATIVE]
        if self.learning_rate is not None:
            problems.append(number_problem(self.learning_rate, "learning_rate", owner, 0, low_open=True))
        raise_problems(problems)  # every problem at once

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-5 if self.method == "full" else 5e-4)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The fields by name, so that scikit-learn addresses them as ``fine_tuning__<field>``.

        The config is frozen: ``Verbalizer.set_params(fine_tuning__epochs=3)`` puts a changed copy in
        its place (``dataclasses.replace``), and ``clone`` builds a new config from these values.
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lm_texts"] = list(self.lm_texts) if self.lm_texts is not None else None
        return d


def replace_config(config: FineTuneConfig | None, key: str, value: Any) -> FineTuneConfig:
    """A copy of ``config`` (default: a new one) with the field that ``fine_tuning__<field>`` names changed."""
    config = config if config is not None else FineTuneConfig()
    name = key.removeprefix("fine_tuning__")
    check_choice(name, list(config.get_params()), "fine_tuning__<field>", "Verbalizer.set_params")
    return dataclasses.replace(config, **{name: value})
