"""What every simulation test shares."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# The components a simulation drives log every injected failure; its own trace says more.
_NOISY = ("driftlog.coordinator", "driftlog.lifecycle", "driftlog.cluster")


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
