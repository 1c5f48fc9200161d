"""Keep a running HAProxy's servers in line with an inventory through the runtime API,
without a reload: new nodes go into free ``server-template`` slots, gone ones drain and
then go to maintenance."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from lb.inventory import InventorySource, Server
from lb.runtime import RuntimeApi, ServerState


class SyncError(Exception):
    pass


@dataclass
class SyncReport:
    backend: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)
    """Removed servers that still had sessions at the drain timeout; those were cut."""

    def summary(self) -> str:
        return (
            f"{self.backend}: +{len(self.added)} -{len(self.removed)} ={len(self.kept)}"
            f" not-ready {len(self.not_ready)} forced {len(self.forced)}"
        )


def probe_readyz(server: Server, path: str = "/readyz", timeout: float = 1.0) -> bool:
    # HAProxy puts a server that leaves maintenance straight into rotation, before its
    # first check; so a node only gets a slot once it answers here.
    url = f"http://{server.host}:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _slot_number(state: ServerState) -> int:
    digits = "".join(ch for ch in reversed(state.name) if ch.isdigit())[::-1]
    return int(digits or 0)


def sync(
    api: RuntimeApi,
    source: InventorySource,
    backend: str,
    *,
    probe: Callable[[Server], bool] | None = probe_readyz,
    drain_timeout: float = 30.0,
    poll_interval: float = 0.2,
) -> SyncReport:
    desired = set(source.servers(backend))
    states = sorted(api.servers_state(backend), key=_slot_number)
    if not states:
        raise SyncError(f"backend {backend!r} has no servers or slots")
    active = {Server(s.addr, s.port): s for s in states if not s.in_maint}
    free = [s for s in states if s.in_maint]
    report = SyncReport(backend)

    for srv, st in sorted(active.items()):
        if srv in desired:
            if st.draining:  # removed earlier, back in the inventory
                api.set_server_state(backend, st.name, "ready")
            report.kept.append(str(srv))

    for srv in sorted(desired - set(active)):
        if probe is not None and not probe(srv):
            report.not_ready.append(str(srv))
            continue
        if not free:
            raise SyncError(f"{backend}: no free slot for {srv}; render more slots")
        slot = free.pop(0)
        api.set_server_addr(backend, slot.name, srv.host, srv.port)
        api.set_server_state(backend, slot.name, "ready")
        report.added.append(str(srv))

    leaving = [st for srv, st in sorted(active.items()) if srv not in desired]
    for st in leaving:
        if not st.draining:
            api.set_server_state(backend, st.name, "drain")
    deadline = time.monotonic() + drain_timeout
    pending = {st.name: st for st in leaving}
    while pending:
        for name in list(pending):
            if api.server_sessions(backend, name) == 0:
                api.set_server_state(backend, name, "maint")
                st = pending.pop(name)
                report.removed.append(f"{st.addr}:{st.port}")
        if not pending:
            break
        if time.monotonic() >= deadline:
            for name, st in pending.items():
                api.set_server_state(backend, name, "maint")
                api.command(f"shutdown sessions server {backend}/{name}")
                report.forced.append(f"{st.addr}:{st.port}")
                report.removed.append(f"{st.addr}:{st.port}")
            break
        time.sleep(poll_interval)
    return report
