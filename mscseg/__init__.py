"""The glue of the project: run settings (``config``), the step runner (``run``, ``mscseg-run``),
the HTML report (``report``) and prediction on new micrographs (``predict``, ``mscseg-predict``).

Importing it loads neither TensorFlow nor torch; the steps import the pieces when they run.
"""
from .errors import RunError

__all__ = ["RunError"]
