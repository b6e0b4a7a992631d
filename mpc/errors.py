"""The one error tree of the share-arithmetic core.

::

    MpcError
    ├── ParameterError      a parameter (precision, party count, bound) is out of range
    ├── EncodingError       an input value cannot be encoded (NaN, ±inf, beyond the bound)
    ├── LengthError         a vector's length does not match what was expected
    ├── SeedError           seed material of the wrong size or kind
    ├── EngineUnavailable   an engine's optional dependency (CrypTen) is missing
    └── GroupError          the parties' computation group (mpc.group) cannot go on
        ├── GroupChanged    a member restarted mid-computation: form the group again
        └── GroupUnavailable  the group cannot form or finish (a party down, refusing,
                            or the deadline passed); nothing was revealed

Messages say what was expected and what came; none of them carries secret material.
"""

from __future__ import annotations


class MpcError(Exception):
    """Base of every error raised by :mod:`mpc`."""


class ParameterError(MpcError, ValueError):
    """A protocol parameter is out of its allowed range."""


class EncodingError(MpcError, ValueError):
    """An input cannot be encoded into the ring."""


class LengthError(MpcError, ValueError):
    """A vector's length does not match the expected length."""


class SeedError(MpcError, ValueError):
    """Seed material has the wrong size or type."""


class EngineUnavailable(MpcError, ImportError):
    """An engine's optional dependency is not installed or does not import."""


class GroupError(MpcError):
    """The parties' computation group (:mod:`mpc.group`) cannot go on."""


class GroupChanged(GroupError):
    """A member of the group restarted (a new incarnation) while a computation ran.

    Nothing received in the broken group is used; the caller forms the group again and
    starts the computation over."""


class GroupUnavailable(GroupError):
    """The group cannot form or finish: a party is unreachable or refuses, or the
    computation's deadline passed. Nothing partial was revealed."""
