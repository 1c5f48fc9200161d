from __future__ import annotations

import pytest

from lb.inventory import LocalInventory, Server
from lb.runtime import RuntimeApi, ServerState
from lb.sync import SyncError, sync

pytestmark = pytest.mark.unit


class FakeRuntime(RuntimeApi):
    """Slots as HAProxy keeps them, and a log of what sync asked for."""

    def __init__(
        self, slots: list[tuple[str, int, int]], sessions: dict[str, list[int]] | None = None
    ) -> None:
        super().__init__("/nonexistent")
        # (addr, port, admin_state); op_state follows admin: maint means stopped
        self.slots = {f"ingest{i}": list(s) for i, s in enumerate(slots, start=1)}
        self.sessions = sessions or {}
        self.log: list[str] = []

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        return [
            ServerState("ingest", name, addr, port, 0 if admin & 0x01 else 2, admin)
            for name, (addr, port, admin) in self.slots.items()
        ]

    def server_sessions(self, backend: str, server: str) -> int:
        seq = self.sessions.get(server, [0])
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def set_server_addr(self, backend: str, server: str, host: str, port: int) -> None:
        self.log.append(f"addr {server} {host}:{port}")
        self.slots[server][0:2] = [host, port]

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        self.log.append(f"{state} {server}")
        admin = self.slots[server][2] & ~0x09
        self.slots[server][2] = admin | {"ready": 0, "drain": 0x08, "maint": 0x01}[state]

    def command(self, cmd: str) -> str:
        self.log.append(cmd)
        return "\n"


MAINT = 0x05  # the `disabled` template slots


def src(*addrs: str) -> LocalInventory:
    return LocalInventory({"ingest": list(addrs)})


def test_adds_into_free_slots_and_keeps_current() -> None:
    rt = FakeRuntime(
        [("10.0.0.1", 8081, 0), ("127.0.0.1", 8081, MAINT), ("127.0.0.1", 8081, MAINT)]
    )
    report = sync(rt, src("10.0.0.1:8081", "10.0.0.2:8081"), "ingest", probe=None)
    assert report.added == ["10.0.0.2:8081"] and report.kept == ["10.0.0.1:8081"]
    assert rt.log == ["addr ingest2 10.0.0.2:8081", "ready ingest2"]
    assert sync(rt, src("10.0.0.1:8081", "10.0.0.2:8081"), "ingest", probe=None).added == []


def test_removes_by_draining_then_maint_once_sessions_end() -> None:
    rt = FakeRuntime([("10.0.0.1", 8081, 0), ("10.0.0.2", 8081, 0)], {"ingest2": [3, 1, 0]})
    report = sync(rt, src("10.0.0.1:8081"), "ingest", probe=None, poll_interval=0.001)
    assert report.removed == ["10.0.0.2:8081"] and report.forced == []
    assert rt.log == ["drain ingest2", "maint ingest2"]


def test_drain_timeout_forces_maint_and_cuts_sessions() -> None:
    rt = FakeRuntime([("10.0.0.1", 8081, 0), ("10.0.0.2", 8081, 0)], {"ingest2": [5]})
    report = sync(rt, src("10.0.0.1:8081"), "ingest", probe=None, drain_timeout=0.05,
                  poll_interval=0.01)  # fmt: skip
    assert report.forced == ["10.0.0.2:8081"]
    assert rt.log[-2:] == ["maint ingest2", "shutdown sessions server ingest/ingest2"]


def test_not_ready_nodes_wait_for_the_next_round() -> None:
    rt = FakeRuntime([("127.0.0.1", 8081, MAINT)])
    report = sync(rt, src("10.0.0.9:8081"), "ingest", probe=lambda s: False)
    assert report.not_ready == ["10.0.0.9:8081"] and rt.log == []
    report = sync(rt, src("10.0.0.9:8081"), "ingest", probe=lambda s: s == Server("10.0.0.9", 8081))
    assert report.added == ["10.0.0.9:8081"]


def test_a_draining_node_back_in_the_inventory_is_made_ready() -> None:
    rt = FakeRuntime([("10.0.0.1", 8081, 0x08)])
    report = sync(rt, src("10.0.0.1:8081"), "ingest", probe=None)
    assert report.kept == ["10.0.0.1:8081"] and rt.log == ["ready ingest1"]


def test_no_free_slot_is_an_error() -> None:
    rt = FakeRuntime([("10.0.0.1", 8081, 0)])
    with pytest.raises(SyncError, match="no free slot"):
        sync(rt, src("10.0.0.1:8081", "10.0.0.2:8081"), "ingest", probe=None)
