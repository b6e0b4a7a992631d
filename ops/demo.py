"""``mpcagg demo``: a local cluster plus simulated trainers doing secure federated averaging.

Each round the collector opens a round from the global model; every trainer
trains a copy on its own synthetic data and submits its update (local − global);
the collector closes the round, reconstructs the sum and applies the mean. Each
secure aggregate is checked bit for bit against the plaintext fixed-point sum of
the same updates (computed here only because the demo owns every trainer).
"""

from __future__ import annotations

import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpcagg import Collector, RetryPolicy, SecureAggregator, TensorLayout
from mpcagg.mpc import ring
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.spec import RoundSpec

FEATURES = 32
HIDDEN = 64
SAMPLES = 256


@dataclass(frozen=True)
class RoundRow:
    round: int
    cohort: int
    parameters: int
    upload_s: float
    close_to_result_s: float
    loss: float
    exact: bool


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def _data(
    trainers: int, seed: int = 0
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(FEATURES, 1, generator=gen)
    shards = []
    for k in range(trainers):
        x = torch.randn(SAMPLES, FEATURES, generator=gen) + 0.1 * k  # mildly non-iid
        y = torch.tanh(x @ teacher) + 0.05 * torch.randn(SAMPLES, 1, generator=gen)
        shards.append((x, y))
    xt = torch.randn(1024, FEATURES, generator=gen)
    return shards, (xt, torch.tanh(xt @ teacher))


def _local_update(
    global_model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, torch.Tensor]:
    model = _model()
    model.load_state_dict(global_model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    base = global_model.state_dict()
    return {k: (v - base[k]).detach() for k, v in model.state_dict().items()}


def _plaintext_ring_sum(spec: RoundSpec, updates: list[dict[str, torch.Tensor]]) -> np.ndarray:
    layout = TensorLayout.from_spec(spec)
    total = ring.zeros(spec.length)
    for u in updates:
        ring.add_(total, spec.fixed_point.encode(layout.flatten(u), bound=spec.bound))
    return total


def _cut_off(cfg: ClusterConfig, party: int) -> ClusterConfig:
    """``cfg`` with ``party`` moved to a local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    parties = [p.model_copy(update={"address": dead}) if p.id == party else p for p in cfg.parties]
    return cfg.model_copy(update={"parties": parties})


def run_demo(
    *,
    parties: int = 3,
    trainers: int = 8,
    rounds: int = 3,
    engine: str = "numpy",
    directory: Path | None = None,
    tls: bool = True,
    echo: bool = True,
) -> bool:
    """Run the demo; returns True if every secure aggregate equalled the plaintext sum."""
    torch.manual_seed(0)
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="mpcagg-demo-")
        directory = Path(tmp.name)
    say = print if echo else (lambda *a, **k: None)
    shards, (xt, yt) = _data(trainers)
    global_model = _model()
    rows: list[RoundRow] = []
    started = time.monotonic()
    mode = "TLS" if tls else "no TLS"
    say(f"starting {parties} servers ({mode}, engine {engine}) in {directory} …")
    try:
        with LocalCluster(directory, parties, tls=tls, engine=engine) as cluster:
            cfg = cluster.config
            ids = [f"trainer-{k}" for k in range(trainers)]
            clients = [
                SecureAggregator(cfg, cid, **cluster.client_kwargs(cid), progress=False)
                for cid in ids
            ]
            collector = Collector(cfg, **cluster.client_kwargs("collector", "collector"))
            up_s = time.monotonic() - started
            say(f"cluster up in {up_s:.1f}s; {trainers} trainers, {rounds} rounds\n")
            say(
                f"{'round':>5} {'cohort':>6} {'params':>7} {'upload s':>9} "
                f"{'close→result s':>15} {'eval loss':>10}  exact"
            )
            # In round 2 the last trainer loses its link to the last server: it is left
            # out of the cohort, and nothing else is needed to recover.
            dropout_round = 2 if trainers >= 3 else 0
            flaky = SecureAggregator(
                _cut_off(cfg, parties - 1), ids[-1], **cluster.client_kwargs(ids[-1]),
                progress=False,
                retry=RetryPolicy(attempts=1),
            )  # fmt: skip
            for r in range(1, rounds + 1):
                round_id = f"demo-round-{r}"
                spec = collector.open_round(
                    round_id, global_model, min_clients=max(2, trainers - 1),
                    max_clients=trainers, bound=100.0,
                )  # fmt: skip
                updates = [_local_update(global_model, s) for s in shards]
                senders = list(clients)
                if r == dropout_round:
                    senders[-1] = flaky
                t0 = time.monotonic()
                with ThreadPoolExecutor(max_workers=min(8, trainers)) as pool:
                    futures = [
                        pool.submit(c.submit, spec, u)
                        for c, u in zip(senders, updates, strict=True)
                    ]
                    receipts = [f.result() for f in futures]
                t1 = time.monotonic()
                counted = [u for u, rc in zip(updates, receipts, strict=True) if rc.complete]
                for rc in receipts:
                    if not rc.complete:
                        say(
                            f"      {rc.client_id} is not held by parties {list(rc.pending)}: "
                            "it is left out of the cohort"
                        )
                collector.close(round_id)
                secure, cohort = collector.aggregate_ring(round_id)
                result = collector.result(round_id, spec)
                t2 = time.monotonic()
                exact = bool(np.array_equal(secure, _plaintext_ring_sum(spec, counted)))
                with torch.no_grad():
                    state = global_model.state_dict()
                    for name, mean in result.mean.items():
                        state[name] += torch.tensor(mean, dtype=state[name].dtype)
                    global_model.load_state_dict(state)
                    loss = float(nn.functional.mse_loss(global_model(xt), yt))
                row = RoundRow(r, cohort, spec.length, t1 - t0, t2 - t1, loss, exact)
                rows.append(row)
                say(
                    f"{row.round:>5} {row.cohort:>6} {row.parameters:>7} {row.upload_s:>9.3f} "
                    f"{row.close_to_result_s:>15.3f} {row.loss:>10.4f}  {'yes' if exact else 'NO'}"
                )
            for c in [*clients, flaky]:
                c.disconnect()
            collector.disconnect()
    finally:
        if tmp is not None:
            tmp.cleanup()
    ok = bool(rows) and all(r.exact for r in rows)
    verdict = (
        "all secure aggregates equal the plaintext fixed-point sums"
        if ok
        else "MISMATCH: a secure aggregate differs from the plaintext sum"
    )
    say(f"\n{verdict} ({time.monotonic() - started:.1f}s in all)")
    return ok
