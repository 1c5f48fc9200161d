"""A small client for HAProxy's runtime API (the admin stats socket) and master CLI.

Every call opens the unix socket, sends one command and reads until HAProxy closes it
(non-interactive mode), so a client holds no connection between calls.
"""

from __future__ import annotations

import contextlib
import csv
import io
import socket
from dataclasses import dataclass
from pathlib import Path

# srv_admin_state bits (HAProxy include/haproxy/server-t.h).
ADMIN_FMAINT = 0x01
ADMIN_IMAINT = 0x02
ADMIN_CMAINT = 0x04
ADMIN_FDRAIN = 0x08
ADMIN_MAINT = ADMIN_FMAINT | ADMIN_IMAINT | 0x20
ADMIN_DRAIN = ADMIN_FDRAIN | 0x10

OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3


class RuntimeApiError(Exception):
    """HAProxy refused a runtime command."""


@dataclass(frozen=True)
class ServerState:
    backend: str
    name: str
    addr: str
    port: int
    op_state: int
    admin_state: int

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_state & ADMIN_MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & ADMIN_DRAIN)

    @property
    def up(self) -> bool:
        return self.op_state == OP_RUNNING and not self.in_maint


@dataclass(frozen=True)
class Proc:
    role: str  # "master", "worker", or "old" for a worker that is finishing
    pid: int
    reloads: int


class RuntimeApi:
    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(cmd.encode() + b"\n")
            # EOF after the command is what makes the master CLI answer and close.
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def _checked(self, cmd: str, ok: tuple[str, ...] = ("",)) -> str:
        out = self.command(cmd)
        text = out.strip()
        if not any(text == o or (o and text.startswith(o)) for o in ok):
            raise RuntimeApiError(f"{cmd!r}: {text}")
        return out

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        out = self.command(f"show servers state {backend or ''}".strip())
        lines = [ln for ln in out.splitlines() if ln.strip()]
        header = next((ln for ln in lines if ln.startswith("# be_id")), None)
        if header is None:
            raise RuntimeApiError(f"show servers state: {out.strip()}")
        cols = header[2:].split()
        states = []
        for ln in lines:
            if ln.startswith("#") or len(ln.split()) < len(cols) - 2 or ln.strip() == "1":
                continue
            row = dict(zip(cols, ln.split(), strict=False))
            states.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    addr=row["srv_addr"],
                    port=int(row["srv_port"]),
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                )
            )
        return states

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` rows (frontends, backends, servers) as dicts keyed by CSV column."""
        out = self.command("show stat")
        return list(csv.DictReader(io.StringIO(out.lstrip("# "))))

    def server_sessions(self, backend: str, server: str) -> int:
        for row in self.stats():
            if row["pxname"] == backend and row["svname"] == server:
                return int(row["scur"] or 0)
        raise RuntimeApiError(f"no server {backend}/{server}")

    def set_server_addr(self, backend: str, server: str, host: str, port: int) -> None:
        self._checked(
            f"set server {backend}/{server} addr {host} port {port}",
            ok=("IP changed", "no need to change", "port changed", ""),
        )

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"bad server state {state!r}")
        self._checked(f"set server {backend}/{server} state {state}")


class MasterCli(RuntimeApi):
    """The master process's CLI (``haproxy -S PATH``): process list and reload."""

    def procs(self) -> list[Proc]:
        procs = []
        section = "current"
        for ln in self.command("show proc").splitlines():
            if ln.startswith("#"):
                section = "old" if "old" in ln else "current"
                continue
            parts = ln.split()
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            role = "old" if section == "old" else parts[1]
            procs.append(Proc(role=role, pid=int(parts[0]), reloads=int(parts[2])))
        return procs

    def master_pid(self) -> int:
        return next(p.pid for p in self.procs() if p.role == "master")

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs() if p.role == "worker"]

    def reload(self) -> None:
        # The master re-executes itself and drops this connection: no answer to read.
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            self.command("reload")
