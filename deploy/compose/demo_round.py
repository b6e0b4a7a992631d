"""One secure-aggregation round against a running cluster: the Compose demo job.

Numpy only (the server image has no torch). The collector opens a round, every
trainer whose client certificate is in ``--cred-dir`` submits a small random
update, the collector closes the round and checks the revealed mean against the
plaintext mean of the updates.

    python demo_round.py --config /etc/mpcagg/cluster.toml --cred-dir /run/secrets

``--cred-dir`` holds ``collector.pem`` / ``collector-key.pem`` and, per trainer,
``trainer-<id>.pem`` / ``trainer-<id>-key.pem`` (``mpcagg certs dev --trainer <id>``
or ``mpcagg certs client``); the client ids are read from the certificates.
Without it (an --insecure cluster), ``--trainers`` anonymous trainers take part.
Exit status 0 when the round committed and the mean matched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mpcagg import Collector, SecureAggregator
from mpcagg.protocol.cluster import load_cluster

SHAPE = (4, 8)


def _credentials(
    cred_dir: Path | None, trainers: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Keyword arguments for the collector and for each trainer."""
    if cred_dir is None:
        return {"client_id": "collector"}, [{"client_id": f"demo-{k}"} for k in range(trainers)]

    def pair(stem: str) -> dict[str, Any]:
        return {"cert": cred_dir / f"{stem}.pem", "key": cred_dir / f"{stem}-key.pem"}

    stems = sorted(p.stem for p in cred_dir.glob("trainer-*.pem") if not p.stem.endswith("-key"))
    if not stems:
        raise SystemExit(f"no trainer-<id>.pem in {cred_dir}")
    return pair("collector"), [pair(s) for s in stems]


def run(config: Path, cred_dir: Path | None, trainers: int = 3, attempts: int = 30) -> bool:
    cluster = load_cluster(config)
    collector_kw, trainer_kws = _credentials(cred_dir, trainers)
    rng = np.random.default_rng(2024)  # demo data only: the sharing itself uses a CSPRNG
    updates = [rng.uniform(-1.0, 1.0, size=SHAPE) for _ in trainer_kws]
    round_id = f"compose-demo-{int(time.time())}"
    with Collector(cluster, **collector_kw) as collector:
        for attempt in range(attempts):  # the servers may still be starting
            try:
                spec = collector.open_round(
                    round_id, {"w": np.zeros(SHAPE)}, min_clients=len(updates), bound=10.0
                )
                break
            except Exception as exc:
                if attempt == attempts - 1:
                    raise
                print(f"waiting for the servers ({type(exc).__name__}: {exc})", flush=True)
                time.sleep(2.0)
        for kw, update in zip(trainer_kws, updates, strict=True):
            with SecureAggregator(cluster, progress=False, **kw) as trainer:
                receipt = trainer.submit(spec, {"w": update})
                print(
                    f"{trainer.client_id}: acknowledged by parties {sorted(receipt.acknowledged)}"
                )
        info = collector.close(round_id)
        print(f"round {round_id}: {info.state.name}, cohort {info.cohort_size}", flush=True)
        result = collector.result(round_id, spec)
    error = float(np.max(np.abs(result.mean["w"] - np.mean(updates, axis=0))))
    ok = result.cohort_size == len(updates) and error < 1e-3
    print(f"secure mean vs plaintext mean: max error {error:.2e} ({'ok' if ok else 'MISMATCH'})")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the cluster file")
    parser.add_argument("--cred-dir", type=Path, default=None, help="client certificates")
    parser.add_argument("--trainers", type=int, default=3, help="without --cred-dir")
    args = parser.parse_args(argv)
    return 0 if run(args.config, args.cred_dir, args.trainers) else 1


if __name__ == "__main__":
    sys.exit(main())
