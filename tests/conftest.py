"""Shared fixtures: small real data (sklearn digits) so package tests stay fast."""

import pytest

from pruning_kit import data


@pytest.fixture(scope="session")
def digits():
    return data.load_digits()
