"""The cluster tests/security/test_fuzz.py shares across its module: an honest round
with three uploads, a victim round for the peer-RPC fuzzing, and how a refusal is judged
(a deliberate status, a short message, never an internal error)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mpcagg import Collector, SecureAggregator
from mpcagg.protocol.identity import Role
from mpcagg.protocol.spec import Holding, RoundSpec
from tests.security.conftest import SecureEnv, create_round, spec_msg, start_env

RPC_S = 10.0
ROUND = "fuzz"
VICTIM = "victim"  # a round the peer-RPC fuzzing may close, fail or commit
LENGTH = 16
HONEST = ("h0", "h1", "h2")
FUZZERS = ("f0", "f1", "f2")
LIMITS = {
    "max_vector_length": 4096,
    "max_clients_per_round": 1000,
    "chunk_bytes": 1024,
    "max_message_bytes": 8192,
}

Code = grpc.StatusCode
REFUSALS = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.FAILED_PRECONDITION,
    Code.ALREADY_EXISTS,
    Code.RESOURCE_EXHAUSTED,
    Code.PERMISSION_DENIED,
    Code.UNAUTHENTICATED,
}
DESERIALIZE = "Exception deserializing request!"
MAX_DETAIL = 1000


@dataclass
class World:
    env: SecureEnv
    spec: RoundSpec
    expected: np.ndarray
    counter: Iterator[int]
    held: tuple[Holding, ...] = ()

    def stub(self, party: int, client_id: str, role: Role = "trainer") -> Any:
        """``party``'s Aggregation service as ``client_id`` (mutual TLS, its certificate)."""
        return self.env.agg(party, client=self.env.client_pair(client_id, role))


def update(k: int) -> dict[str, np.ndarray]:
    """Exact binary fractions, so the fixed-point sum equals the float sum exactly."""
    return {"w": (np.arange(LENGTH) - 7.5) * (k + 1) * 0.125}


def call_outcome(call: Callable[[], object]) -> tuple[Code, str]:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def assert_refused(outcome: tuple[Code, str], allowed: set[Code] = REFUSALS) -> None:
    code, details = outcome
    assert code in allowed, f"{code}: {details[:300]}"
    assert "internal server error" not in details
    assert len(details) <= MAX_DETAIL, "error messages stay short whatever the input"


def fuzz_world(directory: Path) -> Iterator[World]:
    """A cluster with round ROUND open and its three honest trainers' uploads in, and
    round VICTIM open with none."""
    for env in start_env(directory, limits=LIMITS):
        config = env.cluster.config
        with Collector(config, **env.cluster.client_kwargs("collector", "collector")) as collector:
            spec = collector.open_round(ROUND, update(0), min_clients=2, max_clients=500)
        expected = np.zeros(LENGTH)
        held = []
        for k, cid in enumerate(HONEST):
            with SecureAggregator(config, cid, **env.cluster.client_kwargs(cid)) as trainer:
                receipt = trainer.submit(spec, update(k))
                assert receipt.complete
            held.append(Holding(cid, bytes.fromhex(receipt.sharing_id)))
            expected += update(k)["w"]
        create_round(env, spec_msg(VICTIM, LENGTH))
        yield World(env, spec, expected, itertools.count(), tuple(held))
