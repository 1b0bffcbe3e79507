"""The causal LM and nothing above it: model files and loading, the model cache, dtypes and int8, the
exact logits/KV-cache adapter, prefix attention, batching, token facts and the Scorer.

The engine knows nothing of templates, label names or files: it scores token sequences.
"""
