"""Shared test configuration: hypothesis profiles and the floating-point dtype fixture.

Hypothesis profiles (select with ``GATEKIT_HYPOTHESIS_PROFILE=<name>``):

- ``default``: few examples per property so the default suite stays fast on one core;
- ``thorough``: many more examples, for a longer local search;
- ``ci``: like ``default`` but derandomized, so a CI run is reproducible.

Tests that draw random numbers from torch take the seed from hypothesis (``torch.manual_seed``
inside the test), so a failing example replays exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # torch's first call of an op is slow; timing is not the property
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("default", max_examples=20, **_COMMON)
settings.register_profile("ci", max_examples=20, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("GATEKIT_HYPOTHESIS_PROFILE", "default"))

# The suite runs as `pytest -n 2` on 2 cores: one intra-op thread per worker.  Two OpenMP
# threads per worker on a busy machine made small convolutions ~10x slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests, restored after it.

    On a loaded machine two OpenMP threads per test process wait on each other and small
    convs run 10x slower.  A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class DTypeCase:
    """A floating-point dtype with the tolerances for comparing a result in it to an oracle.

    ``atol``/``rtol`` cover one rounding of a float32 (or float64) value into ``dtype``,
    plus a few ulps of the float32 arithmetic before it.
    """

    dtype: torch.dtype
    atol: float
    rtol: float

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype gatekit computes in for inputs of ``dtype`` (documented in estimators)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def close(self, actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """Elementwise ``|actual - expected| <= atol + rtol * |expected|`` in float64."""
        a, e = actual.double(), expected.double()
        return (a - e).abs() <= self.atol + self.rtol * e.abs()

    def __str__(self) -> str:  # readable test ids
        return str(self.dtype).removeprefix("torch.")


DTYPE_CASES = (
    DTypeCase(torch.float16, atol=1e-3, rtol=2e-3),
    DTypeCase(torch.bfloat16, atol=8e-3, rtol=1.6e-2),
    DTypeCase(torch.float32, atol=1e-6, rtol=1e-5),
    DTypeCase(torch.float64, atol=1e-12, rtol=1e-10),
)


@pytest.fixture(scope="session", params=DTYPE_CASES, ids=str)
def dtype_case(request: pytest.FixtureRequest) -> DTypeCase:
    """Each floating-point dtype gatekit supports, with tolerances by dtype.

    Session-scoped so hypothesis ``@given`` tests may use it.
    """
    return request.param
