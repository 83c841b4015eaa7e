"""Shared test setup: devices, the Triton interpreter on CPU, hypothesis profiles, seeds."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. The variable must be
# set before triton is first imported, which is why it lives here and not in a fixture.
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

from hypothesis import HealthCheck, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large], "derandomize": False}
settings.register_profile("ci", max_examples=20, **_common)
settings.register_profile("gpu", max_examples=40, **_common)
settings.register_profile("dev", max_examples=5, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if HAS_CUDA else "ci"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
