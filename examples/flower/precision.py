"""How many precision bits a weighted round needs, measured on this example's updates.

    python examples/flower/precision.py

For each ``precision_bits`` it runs 10 rounds of FedAvg on the example's task with the
aggregation done exactly as an mpcagg weighted round does it (each trainer's ``[n·Δ, n]``
rounded to the ring's fixed point, summed, divided by ``Σn``: the servers' sum is bit
for bit that, tests/integration/test_weighted.py), and prints the largest error of the
first round's mean update against float64, its size relative to the update, the final
test accuracy, and how many trainers the ring holds for bound 50 and max_weight 2000.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "app"))

from digits import task

from mpcagg.mpc import FixedPoint, max_clients_for_bound

BOUND, MAX_WEIGHT, ROUNDS = 50.0, 2000.0, 10


def fedavg(bits: int | None) -> tuple[float, float, float]:
    """(max |error| of round 1's mean update, its RMS, final accuracy); None: float64."""
    parts, test = task.data()
    net = task.model()
    first_error, first_rms = 0.0, 0.0
    for server_round in range(1, ROUNDS + 1):
        start = {k: v.detach().double().numpy().copy() for k, v in net.state_dict().items()}
        rows, weights = [], []
        for pid, part in enumerate(parts):
            local = task.model()
            local.load_state_dict(net.state_dict())
            task.train(local, part, seed=task.SEED + 100 * server_round + pid)
            after = {k: v.detach().double().numpy() for k, v in local.state_dict().items()}
            rows.append(np.concatenate([(after[k] - start[k]).ravel() for k in start]))
            weights.append(float(len(part.y)))
        w = np.array(weights)
        exact = (w[:, None] * np.array(rows)).sum(axis=0) / w.sum()
        if bits is None:
            mean = exact
        else:
            fp = FixedPoint(bits)
            total = np.zeros(len(exact) + 1, dtype=np.uint64)
            for row, wi in zip(rows, weights, strict=True):
                total += fp.encode(np.append(wi * row, wi), bound=BOUND * MAX_WEIGHT)
            decoded = fp.decode(total)
            mean = decoded[:-1] / decoded[-1]
        if server_round == 1:
            first_error = float(np.max(np.abs(mean - exact)))
            first_rms = float(np.sqrt(np.mean(exact**2)))
        offset, new = 0, {}
        for k, v in start.items():
            new[k] = torch_tensor(v + mean[offset : offset + v.size].reshape(v.shape))
            offset += v.size
        net.load_state_dict(new)
    return first_error, first_rms, task.accuracy(net, test)


def torch_tensor(a: np.ndarray) -> object:
    import torch

    return torch.tensor(a, dtype=torch.float32)


def main() -> None:
    print("bits  max|err| round 1  err / RMS(update)  accuracy  trainers the ring holds")
    _, _, reference = fedavg(None)
    for bits in (4, 8, 12, 16, 20, 24):
        err, rms, acc = fedavg(bits)
        holds = max_clients_for_bound(BOUND * MAX_WEIGHT, bits)
        print(f"{bits:4d}  {err:15.2e}  {err / rms:17.2e}  {acc:8.4f}  {holds}")
    print(f"float {'':28s}  {reference:8.4f}")


if __name__ == "__main__":
    main()
