"""Framework-free statistics for the model comparisons: omnibus tests, post hoc tests, Figure 3.

``analyse(frame, metrics, out_dir=None, ...)`` runs everything on a per-image score table;
``stats.tests``, ``stats.posthoc`` and ``stats.plots`` hold the parts. Imports neither
TensorFlow nor torch; matplotlib is imported only when a figure is drawn.
"""
from .analysis import analyse
from .errors import StatsError

__all__ = ["StatsError", "analyse"]
