"""Learning on top of the engine: the fine-tuning config and loop (full or LoRA), LM-loss mixing, and
classification heads on the model's hidden states."""
