"""Running jobs: the Runner interface and its local implementation (a worker process per device)."""
from .runner import Runner, make_runner

__all__ = ["Runner", "make_runner"]
