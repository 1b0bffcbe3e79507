"""Calibration: calibrators on (n_samples, n_classes) score arrays, their fitting inputs, and the
``auto`` policy (cross-validated choice among them), registered by name.

Importing any module of this package registers every calibrator, ``"auto"`` included.
"""

from verbalize.calibration import auto as auto  # registers "auto" in the calibrators' registry
from verbalize.calibration import prior as prior  # registers "prior" (label prior estimated by EM)
