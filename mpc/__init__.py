"""mpcagg's share-arithmetic core: pure functions over Z_2^64, no I/O.

Public surface::

    FixedPoint, max_bound, max_clients_for_bound      fixed-point encoding (CrypTen-compatible)
    Seed                                              32-byte seed material
    PrgContext, expand, expand_into                   domain-separated AES-CTR PRG
    SharingContext, FullShare, SeedShare, share, reconstruct, full_party_for
    get_engine, Engine                                numpy / crypten share arithmetic
    MpcError and subclasses                           the error tree (mpc.errors)
"""

from mpcagg.mpc.engines import Engine, get_engine
from mpcagg.mpc.errors import (
    EncodingError,
    EngineUnavailable,
    LengthError,
    MpcError,
    ParameterError,
    SeedError,
)
from mpcagg.mpc.fixed_point import FixedPoint, max_bound, max_clients_for_bound
from mpcagg.mpc.prg import PROTOCOL_VERSION, PrgContext, expand, expand_into
from mpcagg.mpc.seed import SEED_BYTES, Seed
from mpcagg.mpc.sharing import (
    FullShare,
    SeedShare,
    Share,
    SharingContext,
    full_party_for,
    reconstruct,
    seed_parties,
    share,
)

__all__ = [
    "PROTOCOL_VERSION",
    "SEED_BYTES",
    "EncodingError",
    "Engine",
    "EngineUnavailable",
    "FixedPoint",
    "FullShare",
    "LengthError",
    "MpcError",
    "ParameterError",
    "PrgContext",
    "Seed",
    "SeedError",
    "SeedShare",
    "Share",
    "SharingContext",
    "expand",
    "expand_into",
    "full_party_for",
    "get_engine",
    "max_bound",
    "max_clients_for_bound",
    "reconstruct",
    "seed_parties",
    "share",
]
