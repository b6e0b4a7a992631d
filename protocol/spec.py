"""A round's spec: the tensor layout and the numbers every server must agree on.

The spec digest (SHA-256 of a canonical JSON form) is computed by every server and
by the collector; a mismatch anywhere stops the round before anything is revealed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from mpcagg.mpc import FixedPoint, max_clients_for_bound
from mpcagg.mpc.errors import ParameterError
from mpcagg.protocol.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_id(kind: str, value: str) -> str:
    """Round and client ids: 1-128 characters of ``[A-Za-z0-9._-]``, not starting with a symbol."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 40 else f"{str(value)[:40]}…"
        raise InvalidArgument(
            f"{kind} must be 1-128 characters of letters, digits and ._- "
            f"(starting with a letter or digit), got {shown!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of the layout."""

    name: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidArgument("tensor name must not be empty")
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise InvalidArgument(f"tensor {self.name!r} has invalid shape {list(self.shape)}")

    @property
    def size(self) -> int:
        """Elements of the tensor: the product of ``shape`` (1 for a scalar ``()``)."""
        return math.prod(self.shape)


class RevealMode(enum.StrEnum):
    """Who opens a round's committed aggregate.

    ``collector``: the collector fetches every party's aggregate share and adds them (and
    cohort trainers, if the spec allows it). ``servers``: the parties open it among
    themselves over their group (``servers/group.py``) and each serves the result only to
    its own operator and, if the spec allows it, to cohort trainers; no aggregate share
    leaves a party on the client port.
    """

    COLLECTOR = "collector"
    SERVERS = "servers"


@dataclass(frozen=True, slots=True)
class RoundSpec:
    """Validated round parameters (see ``protos/mpcagg/v1/aggregation.proto``)."""

    round_id: str
    tensors: tuple[TensorSpec, ...]
    n_parties: int
    precision_bits: int = 16
    bound: float = 1000.0
    min_clients: int = 2
    max_clients: int = 1000
    deadline_unix: float = 0.0
    trainers_may_fetch: bool = False
    weighted: bool = False
    """Each trainer shares ``[w·x, w]`` for its own weight ``0 <= w <= max_weight`` (one
    extra ring element after the tensors), so the round reveals ``Σw·x`` and ``Σw``."""
    max_weight: float = 0.0
    """The largest weight a trainer may give (weighted rounds only; 0 otherwise)."""
    reveal: RevealMode = RevealMode.COLLECTOR
    """Who opens the committed aggregate (:class:`RevealMode`)."""
    _digest: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_id("round id", self.round_id)
        try:
            object.__setattr__(self, "reveal", RevealMode(self.reveal))
        except ValueError:
            modes = ", ".join(m.value for m in RevealMode)
            raise InvalidArgument(f"reveal must be one of {modes}, got {self.reveal!r}") from None
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidArgument(f"tensor names must be unique; repeated: {dup}")
        if not 2 <= self.n_parties <= 64:
            raise InvalidArgument(f"n_parties must be in 2..64, got {self.n_parties}")
        try:
            FixedPoint(self.precision_bits)
        except ParameterError as exc:
            raise InvalidArgument(str(exc)) from None
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise InvalidArgument(f"bound must be a finite number > 0, got {self.bound!r}")
        if self.min_clients < 1:
            raise InvalidArgument(f"min_clients must be >= 1, got {self.min_clients}")
        if self.max_clients < self.min_clients:
            raise InvalidArgument(
                f"max_clients ({self.max_clients}) must be >= min_clients ({self.min_clients})"
            )
        if self.weighted:
            if not (math.isfinite(self.max_weight) and self.max_weight > 0):
                raise InvalidArgument(
                    f"a weighted round needs max_weight, a finite number > 0; got "
                    f"{self.max_weight!r}"
                )
        elif self.max_weight != 0:
            raise InvalidArgument(
                f"max_weight ({self.max_weight!r}) is only for weighted rounds; this one is not"
            )
        try:
            safe = max_clients_for_bound(self.coordinate_bound, self.precision_bits)
        except ParameterError:
            safe = 0
        if self.max_clients > safe:
            what = f"bound ±{self.bound}"
            if self.weighted:
                what += f" × max_weight {self.max_weight}"
            allows = f"at most {safe} clients" if safe else "not even one client"
            raise InvalidArgument(
                f"{what} with {self.precision_bits} precision bits allows {allows} "
                f"without wrapping the ring, but max_clients is {self.max_clients}"
            )
        if not math.isfinite(self.deadline_unix) or self.deadline_unix < 0:
            raise InvalidArgument(f"deadline_unix must be >= 0, got {self.deadline_unix!r}")
        object.__setattr__(self, "_digest", hashlib.sha256(self.canonical()).digest())

    @property
    def length(self) -> int:
        """Ring elements per client vector: the layout's total size, plus the weight's
        element in a weighted round."""
        return self.tensor_length + (1 if self.weighted else 0)

    @property
    def tensor_length(self) -> int:
        """Ring elements that carry the tensors (the layout's total size)."""
        return sum(t.size for t in self.tensors)

    @property
    def coordinate_bound(self) -> float:
        """The largest magnitude of any element a trainer encodes: ``bound``, or in a
        weighted round ``max_weight · max(bound, 1)`` (``w·x`` and ``w`` itself). The
        ring must hold ``max_clients`` of these without wrapping."""
        if not self.weighted:
            return self.bound
        return self.max_weight * max(self.bound, 1.0)

    @property
    def fixed_point(self) -> FixedPoint:
        """The encoding of the round's reals into the ring, ``precision_bits`` fractional
        bits (:class:`mpc.FixedPoint`)."""
        return FixedPoint(self.precision_bits)

    @property
    def digest(self) -> bytes:
        """SHA-256 (FIPS 180-4) of :meth:`canonical`, computed once on construction: what
        every server and the collector compare to agree on every field of the spec."""
        return self._digest

    def canonical(self) -> bytes:
        """Canonical JSON bytes: what the digest covers."""
        doc = {
            "v": 1,
            "round_id": self.round_id,
            "tensors": [[t.name, list(t.shape)] for t in self.tensors],
            "n_parties": self.n_parties,
            "precision_bits": self.precision_bits,
            "bound": float(self.bound).hex(),
            "min_clients": self.min_clients,
            "max_clients": self.max_clients,
            "deadline_unix": float(self.deadline_unix).hex(),
            "trainers_may_fetch": self.trainers_may_fetch,
        }
        if self.weighted:  # absent otherwise, so unweighted digests are as before
            doc["weighted"] = True
            doc["max_weight"] = float(self.max_weight).hex()
        if self.reveal is not RevealMode.COLLECTOR:  # absent otherwise, as for weighted
            doc["reveal"] = self.reveal.value
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


SHARING_ID_BYTES = 16
"""A sharing id: drawn fresh by the trainer for each update it shares, the same at every
party and on every retry of that update."""


@dataclass(frozen=True, slots=True, order=True)
class Holding:
    """One client's sharing as a party holds it. The cohort is a set of holdings, so
    shares of two different sharings of one client are never summed together."""

    client_id: str
    sharing_id: bytes

    def __post_init__(self) -> None:
        check_id("client id", self.client_id)
        if len(self.sharing_id) != SHARING_ID_BYTES:
            raise InvalidArgument(
                f"sharing id must be {SHARING_ID_BYTES} bytes, got {len(self.sharing_id)}"
            )

    def __str__(self) -> str:
        return f"{self.client_id}:{self.sharing_id.hex()}"


def cohort_digest(cohort: Iterable[Holding]) -> bytes:
    """SHA-256 over the holdings sorted by client id, one ``<client_id>:<sharing_id hex>\\n``
    line each."""
    h = hashlib.sha256()
    for holding in sorted(cohort):
        h.update(f"{holding}\n".encode())
    return h.digest()


def cohort_to_json(cohort: Iterable[Holding]) -> str:
    """The cohort as a JSON list of ``[client_id, sharing_id hex]``, sorted as
    :func:`cohort_digest` sorts it; :func:`cohort_from_json` reads it back."""
    return json.dumps([[m.client_id, m.sharing_id.hex()] for m in sorted(cohort)])


def cohort_from_json(text: str) -> tuple[Holding, ...]:
    """Inverse of :func:`cohort_to_json`. Raises ``ValueError`` on malformed JSON or hex,
    and :class:`InvalidArgument` on a bad client id or a sharing id that is not
    :data:`SHARING_ID_BYTES` long."""
    return tuple(Holding(cid, bytes.fromhex(sid)) for cid, sid in json.loads(text))


def spec_from_canonical(raw: bytes) -> RoundSpec:
    """Inverse of :meth:`RoundSpec.canonical` (used to restore rounds from disk)."""
    doc = json.loads(raw)
    if doc.get("v") != 1:
        raise InvalidArgument(f"unsupported spec version {doc.get('v')!r}, expected 1")
    return RoundSpec(
        round_id=doc["round_id"],
        tensors=tuple(TensorSpec(name, tuple(shape)) for name, shape in doc["tensors"]),
        n_parties=doc["n_parties"],
        precision_bits=doc["precision_bits"],
        bound=float.fromhex(doc["bound"]),
        min_clients=doc["min_clients"],
        max_clients=doc["max_clients"],
        deadline_unix=float.fromhex(doc["deadline_unix"]),
        trainers_may_fetch=doc["trainers_may_fetch"],
        weighted=doc.get("weighted", False),
        max_weight=float.fromhex(doc["max_weight"]) if "max_weight" in doc else 0.0,
        reveal=RevealMode(doc.get("reveal", RevealMode.COLLECTOR.value)),
    )
