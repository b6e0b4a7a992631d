"""Fixtures shared by the server tests: a cluster CA and party 1's certificate."""

from __future__ import annotations

import pytest

from mpcagg.ops.credentials import KeyPair, create_ca, issue_party_cert


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return create_ca()


@pytest.fixture(scope="module")
def party1(ca: KeyPair) -> KeyPair:
    return issue_party_cert(ca, 1, ["127.0.0.1", "localhost", "party1.example"])
