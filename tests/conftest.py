"""Settings shared by every test.

- ``@pytest.mark.gpu`` tests are skipped (with a reason) when no CUDA device is available;
  ``pytest -m gpu`` runs just them on a machine with one.
- Hypothesis runs derandomized under CI (``CI`` set, as ``.ci/run`` is run): the same examples on
  every run, so a submission's CI result does not depend on luck. Locally it explores freely.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() not in ("", "0", "false"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
