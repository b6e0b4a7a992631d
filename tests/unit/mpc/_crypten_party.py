"""One CrypTen party, run as a subprocess by ``test_crypten_compat``.

Usage: ``python _crypten_party.py SHARE.npy OUT_DIR PRECISION_BITS`` with ``WORLD_SIZE``,
``RANK``, ``RENDEZVOUS`` and ``DISTRIBUTED_BACKEND`` set. Loads this party's share (int64),
wraps it with ``ArithmeticSharedTensor.from_shares`` and reveals it with CrypTen's own
``get_plain_text()`` (and ``reveal()`` for the raw ring value), writing
``plain<rank>.npy`` and ``revealed<rank>.npy`` to ``OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mpcagg.mpc import crypten_shim


def main(share_path: str, out_dir: str, precision_bits: int) -> None:
    crypten = crypten_shim.ensure_initialized()
    from crypten.mpc.primitives import ArithmeticSharedTensor

    rank = crypten.communicator.get().get_rank()
    share = torch.from_numpy(np.load(share_path))
    tensor = ArithmeticSharedTensor.from_shares(share, precision=precision_bits)
    plain = tensor.get_plain_text()
    revealed = tensor.reveal()
    out = Path(out_dir)
    np.save(out / f"plain{rank}.npy", plain.numpy())
    np.save(out / f"revealed{rank}.npy", revealed.numpy())
    crypten.uninit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
