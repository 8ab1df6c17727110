"""Where queued jobs run: a local worker process per device (the default), Ray actors on a cluster, or nowhere
(workers live elsewhere). `make_runner` picks one from the settings."""
from backend.settings import Settings

from .runner import NullRunner, Runner

__all__ = ["Runner", "make_runner"]


def make_runner(settings: Settings) -> Runner:
    if settings.runner == "local":
        from .local import LocalRunner

        return LocalRunner(settings)
    if settings.runner == "ray":
        from .ray_runner import RayRunner

        return RayRunner(settings)
    return NullRunner()
