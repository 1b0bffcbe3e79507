"""Batch interfaces that drive an estimator: file readers, output sinks, streaming jobs with resume, and
Ray Data scale-out."""
