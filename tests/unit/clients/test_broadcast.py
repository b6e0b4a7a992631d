"""broadcast: every party's outcome in exactly one slot, retries under the policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mpcagg.clients.broadcast import Outcomes, broadcast
from mpcagg.clients.transport import RetryPolicy, Transport
from mpcagg.protocol.errors import InvalidArgument, MpcaggError, Unavailable
from tests.unit.clients import make_cluster


@pytest.fixture
def transport() -> Transport:
    addresses = [f"127.0.0.1:{50061 + i}" for i in range(4)]  # never dialled here
    retry = RetryPolicy(attempts=3, initial_backoff_s=0)
    return Transport(make_cluster(addresses), retry=retry, sleep=lambda _: None)


def _op(tries: dict[int, int]) -> Callable[[int], str]:
    """Party 0 answers on its second try, 1 and 2 stay unavailable, 3 refuses."""

    def op(party: int) -> str:
        tries[party] = tries.get(party, 0) + 1
        if party == 0 and tries[party] == 2:
            return "ok"
        if party == 3:
            raise InvalidArgument("bad header", party=3, method="Upload")
        raise Unavailable("down", party=party, method="Upload")

    return op


def test_outcomes_are_classified_after_retries(transport: Transport) -> None:
    tries: dict[int, int] = {}
    out = broadcast(transport, _op(tries), what="Upload")
    assert out.acknowledged == {0: "ok"}
    assert sorted(out.unreachable) == [1, 2] and sorted(out.refused) == [3]
    assert out.unanswered == {}
    assert tries == {0: 2, 1: 3, 2: 3, 3: 1}  # a refusal is not retried
    assert out.reasons() == {
        1: "party 1 refused Upload (UNAVAILABLE): down",
        2: "party 2 refused Upload (UNAVAILABLE): down",
    }
    with pytest.raises(InvalidArgument) as err:
        out.raise_refusal("so far: 0")
    assert err.value.__notes__ == ["so far: 0"]


def test_a_transient_error_after_delivery_is_unanswered(transport: Transport) -> None:
    """``delivered`` moves a transient error, never a refusal, to ``unanswered``."""
    out = broadcast(
        transport,
        _op({}),
        what="Upload",
        parties=[1, 2, 3],
        delivered=lambda p: p in (1, 3),
    )
    assert sorted(out.unanswered) == [1] and sorted(out.unreachable) == [2]
    assert sorted(out.refused) == [3] and not out.acknowledged


def test_merged_keeps_every_slot() -> None:
    down: MpcaggError = Unavailable("down", party=1)
    first: Outcomes[str] = Outcomes(acknowledged={0: "a"}, unanswered={1: down})
    second: Outcomes[str] = Outcomes(acknowledged={2: "b"}, unreachable={3: down})
    both = first.merged(second)
    assert both.acknowledged == {0: "a", 2: "b"}
    assert both.unanswered == {1: down} and both.unreachable == {3: down}
    assert both.refused == {}
