"""What a trainer remembers of the rounds it shared: one :class:`Sharing` per round
(architecture.md §1 "Resume, not re-share"), in memory only, so a retry or a resume
sends byte-identical shares under the same sharing id and nothing is ever re-shared."""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from mpcagg.clients.update import Update
from mpcagg.mpc import Seed
from mpcagg.protocol.errors import InputError, UpdateConflict
from mpcagg.protocol.spec import SHARING_ID_BYTES, RoundSpec

KEPT_SHARINGS = 16
"""Rounds whose sharing (seeds and sharing id, a few hundred bytes) a trainer keeps."""


@dataclass(eq=False)
class Sharing:
    """How this trainer shared its update for one round: reused by every retry.

    ``seeds`` are the n−1 seeds in :func:`mpc.seed_parties` order; ``update_digest`` is
    the payload digest of the encoded update; ``update`` is the update itself, kept
    only while some party may still need its share (and only one held whole, see
    :mod:`.update`). Seeds and update never print.
    """

    spec: RoundSpec
    sharing_id: bytes
    seeds: tuple[Seed, ...] = field(repr=False)
    update_digest: bytes = field(repr=False)
    update: Update | None = field(default=None, repr=False)


class Sharings:
    """A trainer's sharings by round id: at most ``kept``, the least recently used
    dropped first. Not thread-safe (one trainer, one caller at a time)."""

    def __init__(self, kept: int = KEPT_SHARINGS) -> None:
        """``kept`` ≥ 1 rounds are remembered; :class:`ValueError` otherwise."""
        if kept < 1:
            raise ValueError(f"kept must be >= 1, got {kept}")
        self._kept = kept
        self._by_round: OrderedDict[str, Sharing] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_round)

    def for_update(self, spec: RoundSpec, update: Update) -> Sharing:
        """The sharing of ``update`` for ``spec``'s round: the one made before, or a new
        one (fresh sharing id and n−1 fresh seeds, drawn here).

        Raises :class:`UpdateConflict` if a different update (or one under another
        spec) was shared for that round; nothing is changed then.
        """
        digest = update.digest
        held = self._by_round.get(spec.round_id)
        if held is not None:
            if held.spec.digest != spec.digest or not hmac.compare_digest(
                held.update_digest, digest
            ):
                raise UpdateConflict(
                    f"round {spec.round_id!r}: this trainer already shared a different update "
                    f"(sharing {held.sharing_id.hex()[:8]}…); an update is shared once per "
                    "round and nothing was sent"
                )
            self._by_round.move_to_end(spec.round_id)
            return held
        sharing = Sharing(
            spec=spec,
            sharing_id=secrets.token_bytes(SHARING_ID_BYTES),
            seeds=tuple(Seed.generate() for _ in range(spec.n_parties - 1)),
            update_digest=digest,
        )
        self._by_round[spec.round_id] = sharing
        while len(self._by_round) > self._kept:
            self._by_round.popitem(last=False)
        return sharing

    def made(self, round_id: str, sharing_id: str) -> Sharing:
        """The sharing ``sharing_id`` (hex, as in a receipt) of ``round_id``.

        Raises :class:`InputError` if it is not held here (sharings live only in the
        trainer that made them, and only the last ``kept`` rounds).
        """
        sharing = self._by_round.get(round_id)
        if sharing is None or sharing.sharing_id.hex() != sharing_id:
            raise InputError(
                f"this trainer holds no sharing {sharing_id[:8]}… for round "
                f"{round_id!r}: a sharing lives only in the trainer that made it"
            )
        return sharing
