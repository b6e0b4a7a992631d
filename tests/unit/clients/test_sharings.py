"""A trainer's sharings: one per round, reused for the same update, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from mpcagg.clients.sharings import KEPT_SHARINGS, Sharings
from mpcagg.clients.update import Update
from mpcagg.mpc.ring import DTYPE
from mpcagg.protocol.errors import InputError, UpdateConflict
from mpcagg.protocol.spec import RoundSpec, TensorSpec


def spec(round_id: str, bound: float = 1.0) -> RoundSpec:
    return RoundSpec(round_id, (TensorSpec("w", (4,)),), 3, bound=bound)


def vector(value: int) -> Update:
    return Update.whole(np.full(4, value, dtype=DTYPE))


def test_the_same_update_reuses_the_sharing_and_another_is_refused() -> None:
    kept = Sharings()
    first = kept.for_update(spec("r1"), vector(1))
    assert len(first.seeds) == 2 and len(first.sharing_id) == 16
    assert kept.for_update(spec("r1"), vector(1)) is first
    with pytest.raises(UpdateConflict, match="round 'r1': this trainer already shared"):
        kept.for_update(spec("r1"), vector(2))
    with pytest.raises(UpdateConflict):
        kept.for_update(spec("r1", bound=2.0), vector(1))  # same round, another spec
    other = kept.for_update(spec("r2"), vector(1))
    assert other.sharing_id != first.sharing_id and other.seeds != first.seeds
    assert kept.made("r1", first.sharing_id.hex()) is first
    assert "seeds" not in repr(first) and "Seed(" not in repr(first)


def test_a_sharing_not_held_is_an_input_error() -> None:
    kept = Sharings()
    made = kept.for_update(spec("r1"), vector(1))
    with pytest.raises(InputError, match="holds no sharing 00000000… for round 'r1'"):
        kept.made("r1", "00" * 16)
    with pytest.raises(InputError, match="for round 'r2'"):
        kept.made("r2", made.sharing_id.hex())


def test_only_the_most_recently_used_rounds_are_kept() -> None:
    kept = Sharings()
    oldest = kept.for_update(spec("r0"), vector(0))
    made = [kept.for_update(spec(f"r{i}"), vector(i)) for i in range(1, KEPT_SHARINGS)]
    kept.for_update(spec("r0"), vector(0))  # used again: now the most recent
    kept.for_update(spec("new"), vector(7))
    assert len(kept) == KEPT_SHARINGS
    assert kept.made("r0", oldest.sharing_id.hex()) is oldest
    with pytest.raises(InputError):
        kept.made("r1", made[0].sharing_id.hex())  # the least recently used was dropped
    assert kept.made("r2", made[1].sharing_id.hex()) is made[1]
    with pytest.raises(ValueError, match="kept must be >= 1"):
        Sharings(kept=0)
