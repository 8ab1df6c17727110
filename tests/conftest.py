"""Shared fixtures: tiny random models of every supported architecture (built once per session) and varied pairs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny`, `import reference` from any test

from tiny import ARCHS, make_tiny, tiny_pairs  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session", autouse=True)
def _ssah_home(tmp_path_factory):
    """Every test runs against a temporary SSAH_HOME (converted built-in models, caches, the model-hash memo), not
    the user's: built once per session, so the built-in models are converted once per run as on a clean machine."""
    home = tmp_path_factory.mktemp("ssah-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSAH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and the test machine is shared: a module asks for it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """`tiny_model_path(arch)` -> folder of a tiny random model of `arch`, built on first use and kept for the session."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = make_tiny(arch, root / arch, seed=ARCHS.index(arch))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def safety_pairs():
    """12 harmful requests with varied refusals, of varied lengths."""
    from backend.engine.data import Pair

    return [Pair(p, r) for p, r in tiny_pairs(12, "safety", seed=0)]


@pytest.fixture(scope="session")
def utility_pairs():
    """12 benign requests with answers, of varied lengths."""
    from backend.engine.data import Pair

    return [Pair(p, r) for p, r in tiny_pairs(12, "utility", seed=0)]
