"""Flower's simulation runtime without Ray: an in-process backend for its Fleet engine.

``flwr.simulation.run_simulation`` runs the real simulation runtime (the in-memory
LinkState, the Fleet engine, the ServerApp on a Grid, each ClientApp with its mods and
its own Context), but its engine loads the Ray backend by name
(``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend``, flwr 1.42). This
module puts an in-process backend under that name before the engine starts, so no Ray
is installed or started: each message is handed to the ClientApp in this process, one
at a time. Everything else is Flower's own code path.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig
from flwr.serverapp import ServerApp

RAY_BACKEND = "flwr.server.superlink.fleet.vce.backend.raybackend"


class InProcessBackend(Backend):
    """Runs the ClientApp in the calling thread (one worker)."""

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self._app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self._app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return 1

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        self._app_fn = None

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self._app_fn is None:
            raise RuntimeError("build() the backend before processing messages")
        return self._app_fn()(message, context), context


def run(server_app: ServerApp, client_app: ClientApp, num_supernodes: int) -> None:
    """``flwr.simulation.run_simulation`` on the in-process backend, telemetry off."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    shim = types.ModuleType(RAY_BACKEND)
    shim.RayBackend = InProcessBackend  # type: ignore[attr-defined]
    previous = sys.modules.get(RAY_BACKEND)
    sys.modules[RAY_BACKEND] = shim
    try:
        from flwr.simulation import run_simulation

        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_name="in-process",
        )
    finally:
        if previous is None:
            sys.modules.pop(RAY_BACKEND, None)
        else:
            sys.modules[RAY_BACKEND] = previous
