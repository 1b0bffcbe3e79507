"""What the model reads: templates (TOML in and out), label words, demonstrations and the prompt builder
with the one prompt-budget rule."""
