"""Suite-wide settings."""

import pytest
import torch

# Headless rendering defaults (MUJOCO_GL=egl) must be set before any test module imports
# mujoco itself: importing robopolicy.sim sets them.
import robopolicy.sim  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are small: intra-op threads gain nothing, and on a 2-core machine
    shared with simulator workers OpenMP threads spin for a busy core and stall each op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA; on a machine without it (CI) they are skipped."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
