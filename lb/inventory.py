"""Where the web nodes are: a local file or list, or EC2 instances found by tag."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, order=True)
class Server:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Server:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


Inventory = Mapping[str, Sequence[Server]]
"""Backend name (``ingest``, ``push``) to its servers."""


class InventorySource(Protocol):
    def servers(self, backend: str) -> list[Server]: ...


def _servers(items: Iterable[Any]) -> list[Server]:
    out = []
    for item in items:
        if isinstance(item, Server):
            out.append(item)
        elif isinstance(item, str):
            out.append(Server.parse(item))
        else:
            out.append(Server(str(item["host"]), int(item["port"])))
    return sorted(set(out))


class LocalInventory:
    """Servers from a JSON/YAML file ``{"ingest": ["127.0.0.1:8081", ...], ...}``, read on
    every call so that editing the file is how a local operator adds or removes a node; or
    from a fixed mapping."""

    def __init__(self, source: Path | Mapping[str, Sequence[str | Server]]) -> None:
        self._source = source

    def _load(self) -> Mapping[str, Any]:
        if not isinstance(self._source, Path):
            return self._source
        text = self._source.read_text()
        if self._source.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{self._source}: expected a mapping of backend to servers")
        return data

    def servers(self, backend: str) -> list[Server]:
        return _servers(self._load().get(backend, []))

    def inventory(self) -> dict[str, list[Server]]:
        return {name: _servers(items) for name, items in sorted(self._load().items())}


class Ec2TagInventory:
    """Running EC2 instances tagged ``buzzer:show=<show>`` and ``buzzer:tier=<backend>``,
    addressed by private IP and a port fixed per tier (instances don't advertise one)."""

    def __init__(
        self,
        tags: Mapping[str, str],
        ports: Mapping[str, int],
        *,
        tier_tag: str = "buzzer:tier",
        client: Any = None,
        region: str | None = None,
    ) -> None:
        self._tags = dict(tags)
        self._ports = dict(ports)
        self._tier_tag = tier_tag
        self._client = client
        self._region = region

    def _ec2(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("ec2", region_name=self._region)
        return self._client

    def servers(self, backend: str) -> list[Server]:
        if backend not in self._ports:
            raise KeyError(f"no port known for backend {backend!r}")
        filters = [{"Name": "instance-state-name", "Values": ["running"]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(self._tags.items())]
        filters.append({"Name": f"tag:{self._tier_tag}", "Values": [backend]})
        found = []
        for page in self._ec2().get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    ip = instance.get("PrivateIpAddress")
                    if ip:
                        found.append(Server(ip, self._ports[backend]))
        return sorted(set(found))


def parse_source(spec: str, ports: Mapping[str, int]) -> InventorySource:
    """``local:FILE``, ``local:host:port,host:port`` (one backend) or ``ec2:TAG=VALUE[,...]``."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        path = Path(rest)
        if path.suffix in (".json", ".yaml", ".yml") or path.exists():
            return LocalInventory(path)
        return _FixedList(_servers(s for s in rest.split(",") if s))
    if kind == "ec2":
        tags = dict(pair.split("=", 1) for pair in rest.split(",") if pair)
        if not tags:
            raise ValueError("ec2 source needs at least one TAG=VALUE")
        return Ec2TagInventory(tags, ports)
    raise ValueError(f"unknown inventory source {spec!r}: use local:FILE or ec2:TAG=VALUE")


class _FixedList:
    def __init__(self, servers: list[Server]) -> None:
        self._servers = servers

    def servers(self, backend: str) -> list[Server]:
        return list(self._servers)
