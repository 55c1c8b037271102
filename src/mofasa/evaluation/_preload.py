"""Loaded once by the worker pool's forkserver: imports the checkers so that workers start warm.

Kept apart so that importing `mofasa.evaluation.jobs` itself has no side effect.
"""

from mofasa.evaluation import jobs

jobs.warm()
