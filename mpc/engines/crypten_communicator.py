"""CrypTen's ``crypten.communicator.Communicator`` over a :class:`mpc.group.GroupChannel`.

CrypTen 0.4.1 reaches its communicator only through ``crypten.communicator.get()``
(``arithmetic.py``: ``reveal`` is ``comm.get().all_reduce(share)``, ``get_plain_text``
decodes that). :func:`mpc.crypten_shim.use_communicator` makes ``get()`` return a
:class:`GroupCommunicator` for the current thread, so a party's
``ArithmeticSharedTensor`` (built with ``from_shares`` from its aggregate share) is
revealed over whatever links the channel runs on — in mpcagg, the parties' mutual-TLS
peer links, not gloo (torch 2.13's CPU gloo has no TLS transport).

Tensors travel as int64 ring elements (CrypTen's shares are ``torch.long``). Supported:
``send``/``recv``/``isend``/``irecv``, ``broadcast``, ``all_reduce``/``reduce`` (SUM, and
BXOR for binary shares), ``all_gather``/``gather``, ``scatter``, ``barrier``. The
``*_obj`` methods raise: they unpickle what a peer sends, and nothing pickled crosses
an organisation's boundary here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce as fold
from typing import Any

import numpy as np

from mpcagg.mpc import crypten_shim, ring
from mpcagg.mpc.group import GroupChannel
from mpcagg.mpc.ring import RingVector

crypten_shim.load()

import torch  # noqa: E402 - after the shim, which CrypTen's import needs
from crypten.communicator import Communicator  # noqa: E402
from torch.distributed import ReduceOp  # noqa: E402


def _ring(tensor: Any) -> RingVector:
    if tensor.dtype != torch.int64:
        raise TypeError(f"the group carries int64 (ring) tensors, got {tensor.dtype}")
    return ring.from_int64(tensor.detach().contiguous().reshape(-1).numpy())


def _tensor(vector: RingVector, shape: Any) -> Any:
    return torch.from_numpy(ring.as_int64(vector).copy()).reshape(shape)


def _combine(vectors: Sequence[RingVector], op: Any) -> RingVector:
    if op == ReduceOp.SUM:
        return ring.total(vectors, len(vectors[0]))
    if op == ReduceOp.BXOR:
        return fold(np.bitwise_xor, vectors)
    raise NotImplementedError(f"reduce op {op} is not supported (SUM and BXOR are)")


class _Done:
    """The handle ``isend``/``irecv`` return; ``wait()`` completes the operation."""

    def __init__(self, finish: Any) -> None:
        self._finish = finish

    def wait(self) -> None:
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()

    def is_completed(self) -> bool:
        return self._finish is None


class GroupCommunicator(Communicator):  # type: ignore[misc]
    """One party's CrypTen communicator: rank = party index, world = the group."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, channel: GroupChannel, name: str | None = None) -> None:
        self.channel = channel
        self._name = name or f"party-{channel.rank}"
        self.reset_communication_stats()

    # --- identity -----------------------------------------------------------------------

    @classmethod
    def is_initialized(cls) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.channel.world_size

    def get_rank(self) -> int:
        return self.channel.rank

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    # --- point to point -----------------------------------------------------------------

    def send(self, tensor: Any, dst: int) -> None:
        self.channel.send(dst, _ring(tensor))

    def recv(self, tensor: Any, src: int | None = None) -> Any:
        if src is None:
            raise NotImplementedError("recv needs its source: messages are numbered per pair")
        return _tensor(self.channel.recv(src, tensor.nelement()), tensor.shape)

    def isend(self, tensor: Any, dst: int) -> _Done:
        self.send(tensor, dst)
        return _Done(None)

    def irecv(self, tensor: Any, src: int | None = None) -> _Done:
        def finish() -> None:
            tensor.data.copy_(self.recv(tensor, src))

        return _Done(finish)

    # --- collectives --------------------------------------------------------------------

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        if batched:
            return [self.all_reduce(t, op) for t in input]
        gathered = self.channel.all_gather(_ring(input))
        return _tensor(_combine(gathered, op), input.shape)

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        if batched:
            return [self.reduce(t, dst, op) for t in input]
        gathered = self.channel.gather(_ring(input), dst)
        return None if gathered is None else _tensor(_combine(gathered, op), input.shape)

    def all_gather(self, tensor: Any) -> list[Any]:
        return [_tensor(v, tensor.shape) for v in self.channel.all_gather(_ring(tensor))]

    def gather(self, tensor: Any, dst: int) -> list[Any]:
        gathered = self.channel.gather(_ring(tensor), dst)
        if gathered is None:
            return [None]
        return [_tensor(v, tensor.shape) for v in gathered]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        if batched:
            return [self.broadcast(t, src) for t in input]
        out = self.channel.broadcast(_ring(input), src)
        if self.get_rank() != src:
            input.data.copy_(_tensor(out, input.shape))
        return input

    def scatter(self, scatter_list: Any, src: int, size: Any = None, device: Any = None) -> Any:
        rank = self.get_rank()
        if rank == src:
            vectors = [_ring(t) for t in scatter_list]
            shape = scatter_list[rank].shape
            return _tensor(self.channel.scatter(vectors, src, len(vectors[rank])), shape)
        shape = size if size is not None else scatter_list[rank].size()
        length = int(np.prod(tuple(shape)))
        return _tensor(self.channel.scatter(None, src, length), shape)

    def barrier(self) -> None:
        self.channel.barrier()

    # --- objects: not carried -----------------------------------------------------------

    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        raise NotImplementedError("the group carries ring tensors only, never pickled objects")

    def recv_obj(self, src: int, group: Any = None) -> Any:
        raise NotImplementedError("the group carries ring tensors only, never pickled objects")

    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        raise NotImplementedError("the group carries ring tensors only, never pickled objects")
