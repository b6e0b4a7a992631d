"""Client tests; helpers shared by the test modules."""

from __future__ import annotations

from typing import Any

from mpcagg.protocol.cluster import ClusterConfig, PartyConfig


def party_config(index: int, address: str) -> PartyConfig:
    """A client-side party entry (fills a peer address if the config requires one)."""
    fields: dict[str, Any] = {"id": index, "address": address}
    if "peer_address" in PartyConfig.model_fields:
        fields["peer_address"] = "127.0.0.1:0"
    return PartyConfig(**fields)


def party_toml(index: int, address: str) -> str:
    """The ``[[parties]]`` table of :func:`party_config`."""
    lines = ["[[parties]]", f"id = {index}", f'address = "{address}"']
    if "peer_address" in PartyConfig.model_fields:
        lines.append('peer_address = "127.0.0.1:0"')
    return "\n".join(lines) + "\n"


def make_cluster(addresses: list[str], **kw: Any) -> ClusterConfig:
    return ClusterConfig(parties=[party_config(i, a) for i, a in enumerate(addresses)], **kw)
