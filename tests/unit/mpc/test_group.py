"""The parties' group (mpc.group) and CrypTen's communicator on it, among in-process parties.

Each party runs in its own thread with its own channel over in-process links; a
reveal of aggregate shares made by ``mpc.share`` must give the ring sum at every
party, bit for bit, with the numpy engine and with CrypTen's own ``reveal`` /
``get_plain_text`` (the communicator being ours, installed per thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

import mpcagg.mpc as mpc
from mpcagg.mpc import crypten_shim, ring
from mpcagg.mpc.engines import Engine
from mpcagg.mpc.errors import GroupUnavailable, LengthError, ParameterError
from mpcagg.mpc.group import GroupChannel
from mpcagg.mpc.ring import DTYPE, RingVector
from tests.crypten_world import crypten_world_of_one

T = TypeVar("T")
WAIT_S = 10.0


class Hub:
    """In-process delivery: a message is held by its recipient as soon as it is posted."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._held: dict[tuple[int, int, int], RingVector] = {}
        self._changed = threading.Condition()
        self.down: set[int] = set()

    def links(self, rank: int) -> HubLinks:
        return HubLinks(self, rank)

    def put(self, src: int, dst: int, seq: int, vector: RingVector) -> None:
        if dst in self.down:
            raise GroupUnavailable(f"party {dst} is down")
        with self._changed:
            self._held[src, dst, seq] = vector.copy()
            self._changed.notify_all()

    def take(self, src: int, dst: int, seq: int, timeout: float) -> RingVector:
        with self._changed:
            if not self._changed.wait_for(lambda: (src, dst, seq) in self._held, timeout):
                raise GroupUnavailable(f"message {seq} from party {src} did not come")
            return self._held.pop((src, dst, seq))


class HubLinks:
    def __init__(self, hub: Hub, rank: int, timeout: float = WAIT_S) -> None:
        self.hub, self.rank, self.world_size, self.timeout = hub, rank, hub.world_size, timeout

    def post(self, dst: int, seq: int, vector: RingVector) -> None:
        self.hub.put(self.rank, dst, seq, vector)

    def flush(self) -> None:
        pass

    def recv(self, src: int, seq: int, length: int) -> RingVector:
        got = self.hub.take(src, self.rank, seq, self.timeout)
        if len(got) != length:
            raise LengthError(f"got {len(got)} elements, expected {length}")
        return got


def run_parties(n: int, body: Callable[[GroupChannel], T], hub: Hub | None = None) -> list[T]:
    """``body(channel)`` at every party, each in its own thread; results by rank."""
    hub = hub or Hub(n)
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(body, GroupChannel(hub.links(r))) for r in range(n)]
        return [f.result(timeout=3 * WAIT_S) for f in futures]


def aggregate_shares(n: int, clients: list[RingVector]) -> list[RingVector]:
    """Each party's aggregate share of ``clients`` (shared by ``mpc.share``), numpy-summed."""
    totals = [ring.zeros(len(clients[0])) for _ in range(n)]
    for c, vec in enumerate(clients):
        ctx = mpc.SharingContext("round-group", f"client-{c}")
        seeds = [mpc.Seed.generate() for _ in range(n - 1)]
        for p, s in enumerate(mpc.share(vec, n, mpc.full_party_for(ctx.client_id, n), seeds, ctx)):
            ring.add_(totals[p], s.expand())
    return totals


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Engine]]:
    with crypten_world_of_one(tmp_path_factory.mktemp("crypten-group")):
        yield mpc.get_engine("numpy"), mpc.get_engine("crypten")


def _clients(rng: np.random.Generator, count: int, length: int) -> list[RingVector]:
    out = [rng.integers(0, 2**64, length, dtype=np.uint64, endpoint=False) for _ in range(count)]
    out[0][:4] = [0, 2**63, 2**64 - 1, 2**63 - 1]  # values that wrap
    return out


@pytest.mark.crypten
@pytest.mark.parametrize("n", [3, 5])
def test_engines_reveal_the_ring_sum_bit_identically(
    engines: tuple[Engine, Engine], n: int
) -> None:
    rng = np.random.default_rng(n)
    clients = _clients(rng, 4, 5000)
    shares = aggregate_shares(n, clients)
    expected = ring.total(clients, 5000)
    numpy_engine, crypten_engine = engines
    revealed = {}
    for engine in engines:
        revealed[engine.name] = run_parties(
            n, lambda ch, e=engine: e.reveal(e.from_ring(shares[ch.rank]), ch)
        )
    for party in range(n):
        for name in ("numpy", "crypten"):
            got = revealed[name][party]
            assert got.dtype == DTYPE
            np.testing.assert_array_equal(got, expected)
    assert numpy_engine.name == "numpy" and crypten_engine.name == "crypten"


@pytest.mark.crypten
def test_crypten_shares_are_arithmetic_shared_tensors_of_the_group(
    engines: tuple[Engine, Engine],
) -> None:
    """Inside the group, CrypTen's own API sees world size n and rank = party index, and
    ``get_plain_text()`` decodes the revealed sum (CrypTen's float32 decoding)."""
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from mpcagg.mpc.engines.crypten_communicator import GroupCommunicator

    crypten = crypten_shim.load()
    n, f = 3, 16
    x = np.array([1.5, -2.25, 1000.0, -0.125, 0.0])
    clients = [mpc.FixedPoint(f).encode(x), mpc.FixedPoint(f).encode(-x / 2)]
    shares = aggregate_shares(n, clients)
    engine = engines[1]

    def body(ch: GroupChannel) -> tuple[int, int, np.ndarray, int]:
        acc = engine.from_ring(shares[ch.rank])
        assert isinstance(acc, ArithmeticSharedTensor)
        with crypten_shim.use_communicator(GroupCommunicator(ch)):
            world = crypten.communicator.get().get_world_size()
            rank = crypten.communicator.get().get_rank()
            plain = acc.get_plain_text().numpy()
        # outside the block, this thread sees CrypTen's own world of one again
        return world, rank, plain, crypten.communicator.get().get_world_size()

    results = run_parties(n, body)
    for party, (world, rank, plain, after) in enumerate(results):
        assert (world, rank, after) == (n, party, 1)
        np.testing.assert_array_equal(plain, (x / 2).astype(np.float32))


@pytest.mark.crypten
def test_the_communicator_is_installed_for_one_thread_only(engines: tuple[Engine, Engine]) -> None:
    from mpcagg.mpc.engines.crypten_communicator import GroupCommunicator

    crypten = crypten_shim.load()
    inside, outside = threading.Event(), threading.Event()
    seen: list[int] = []

    def other_thread() -> None:
        inside.wait(WAIT_S)
        seen.append(crypten.communicator.get().get_world_size())
        outside.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    hub = Hub(2)
    with crypten_shim.use_communicator(GroupCommunicator(GroupChannel(hub.links(0)))):
        assert crypten.communicator.get().get_world_size() == 2
        inside.set()
        assert outside.wait(WAIT_S)
    worker.join(WAIT_S)
    assert seen == [1]


@pytest.mark.crypten
def test_crypten_collectives_over_the_group(engines: tuple[Engine, Engine]) -> None:
    from torch.distributed import ReduceOp

    from mpcagg.mpc.engines.crypten_communicator import GroupCommunicator

    n = 3

    def body(ch: GroupChannel) -> dict[str, Any]:
        comm = GroupCommunicator(ch)
        r = ch.rank
        mine = torch.tensor([[r, 10 * r], [-r, 2**62]], dtype=torch.int64)
        out: dict[str, Any] = {"sum": comm.all_reduce(mine)}
        out["xor"] = comm.all_reduce(torch.tensor([1 << r, 7]), op=ReduceOp.BXOR)
        out["gather"] = comm.all_gather(torch.tensor([r]))
        b = torch.tensor([42, -1]) if r == 1 else torch.zeros(2, dtype=torch.int64)
        out["bcast"] = comm.broadcast(b, 1).clone()
        out["reduce"] = comm.reduce(torch.tensor([r + 1]), 2)
        parts = [torch.tensor([100 + k]) for k in range(n)] if r == 0 else None
        out["scatter"] = comm.scatter(parts, 0, size=torch.Size([1]))
        if r == 0:
            comm.send(torch.tensor([5, 6]), 2)
        if r == 2:
            out["recv"] = comm.recv(torch.zeros(2, dtype=torch.int64), 0)
        comm.barrier()
        return out

    results = run_parties(n, body)
    for r, out in enumerate(results):
        assert out["sum"].tolist() == [[3, 30], [-3, (3 * 2**62 + 2**63) % 2**64 - 2**63]]
        assert out["xor"].tolist() == [7, 7]
        assert [t.item() for t in out["gather"]] == [0, 1, 2]
        assert out["bcast"].tolist() == [42, -1]
        assert out["reduce"] is None if r != 2 else out["reduce"].tolist() == [6]
        assert out["scatter"].tolist() == [100 + r]
    assert results[2]["recv"].tolist() == [5, 6]


@pytest.mark.crypten
def test_objects_never_cross_the_group(engines: tuple[Engine, Engine]) -> None:
    from mpcagg.mpc.engines.crypten_communicator import GroupCommunicator

    comm = GroupCommunicator(GroupChannel(Hub(2).links(0)))
    with pytest.raises(NotImplementedError, match="never pickled"):
        comm.send_obj({"a": 1}, 1)
    with pytest.raises(NotImplementedError, match="never pickled"):
        comm.broadcast_obj(None, 1)
    with pytest.raises(TypeError, match="int64"):
        comm.send(torch.zeros(2, dtype=torch.float32), 1)


def test_a_reveal_sends_and_receives_n_minus_one_shares() -> None:
    n, d = 4, 1000
    shares = aggregate_shares(n, _clients(np.random.default_rng(9), 2, d))
    engine = mpc.get_engine("numpy")
    channels = run_parties(n, lambda ch: (engine.reveal(shares[ch.rank], ch), ch)[1])
    for ch in channels:
        assert ch.traffic.bytes_sent == ch.traffic.bytes_received == (n - 1) * 8 * d
        assert ch.traffic.messages_sent == ch.traffic.messages_received == n - 1


def test_messages_are_numbered_per_pair() -> None:
    """Two collectives in a row: message k from i to j is the k-th one both expect."""

    def body(ch: GroupChannel) -> list[list[int]]:
        first = ch.all_gather(np.array([ch.rank], dtype=DTYPE))
        second = ch.all_gather(np.array([10 + ch.rank], dtype=DTYPE))
        return [[int(v[0]) for v in first], [int(v[0]) for v in second]]

    for got in run_parties(3, body):
        assert got == [[0, 1, 2], [10, 11, 12]]


def test_a_party_that_never_answers_stops_the_reveal() -> None:
    """Party 2 never takes part: the others raise GroupUnavailable instead of returning a
    sum of fewer than n shares (which would be uniformly random, and wrong)."""
    n = 3
    hub = Hub(n)
    engine = mpc.get_engine("numpy")
    share = ring.zeros(8)

    def body(rank: int) -> Any:
        links = HubLinks(hub, rank, timeout=0.5)
        return engine.reveal(share, GroupChannel(links))

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(body, r) for r in (0, 1)]
        for f in futures:
            with pytest.raises(GroupUnavailable, match="did not come"):
                f.result(timeout=WAIT_S)


def test_a_channel_talks_only_to_other_members() -> None:
    ch = GroupChannel(Hub(3).links(1))
    with pytest.raises(ParameterError, match="not another member"):
        ch.send(1, ring.zeros(1))
    with pytest.raises(ParameterError, match="not another member"):
        ch.recv(3, 1)
    with pytest.raises(ParameterError, match="rank 3"):
        GroupChannel(HubLinks(Hub(3), 3))


def test_a_message_of_another_length_is_refused() -> None:
    hub = Hub(2)
    hub.put(1, 0, 0, ring.zeros(3))
    with pytest.raises(LengthError, match="expected 4"):
        GroupChannel(hub.links(0)).recv(1, 4)


def test_a_sender_may_reuse_its_buffer_once_send_returns() -> None:
    hub = Hub(2)
    buf = np.array([1, 2], dtype=DTYPE)
    GroupChannel(hub.links(0)).send(1, buf)
    buf[:] = 0
    np.testing.assert_array_equal(GroupChannel(hub.links(1)).recv(0, 2), [1, 2])
