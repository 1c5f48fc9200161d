"""Put a rendered config in place: temp file beside the target, ``haproxy -c``, atomic
rename, then a hitless reload of the running master. A config that fails the check never
replaces the one in place."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lb.runtime import MasterCli, RuntimeApi


class ApplyError(Exception):
    pass


@dataclass(frozen=True)
class ApplyResult:
    path: Path
    changed: bool
    reloaded: bool
    workers_before: list[int] = field(default_factory=list)
    workers_after: list[int] = field(default_factory=list)


def ensure_state_file(path: str | Path) -> None:
    # HAProxy warns (and -dW fails) on a missing or empty state file; "1" is an empty
    # version-1 state.
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("1\n")


def validate(config: Path, haproxy: str = "haproxy", zero_warning: bool = True) -> None:
    cmd = [haproxy, "-c", "-f", str(config)]
    if zero_warning:
        cmd.insert(1, "-dW")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as exc:
        raise ApplyError(f"{haproxy}: not found") from exc
    if res.returncode != 0:
        detail = "\n".join(
            ln for ln in (res.stdout + res.stderr).splitlines() if "[NOTICE]" not in ln
        )
        raise ApplyError(f"haproxy -c rejected {config}:\n{detail.strip()}")


def write_validated(
    text: str, target: Path, haproxy: str = "haproxy", zero_warning: bool = True
) -> bool:
    """Validate and install ``text`` at ``target``; False if it was already there."""
    if target.exists() and target.read_text() == text:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so that os.replace is a rename on one filesystem: atomic.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        try:
            validate(tmp, haproxy, zero_warning)
        except ApplyError as exc:
            raise ApplyError(f"new config for {target} not installed; {exc}") from None
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def save_server_state(runtime: RuntimeApi, state_file: Path) -> None:
    out = runtime.command("show servers state")
    if not out.startswith("1"):
        raise ApplyError(f"show servers state: {out.strip()}")
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(out)
    os.replace(tmp, state_file)


def reload(master_socket: Path, timeout: float = 10.0) -> tuple[list[int], list[int]]:
    """Reload through the master CLI; returns the worker pids before and after."""
    cli = MasterCli(master_socket)
    before = cli.worker_pids()
    cli.reload()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            after = cli.worker_pids()
        except OSError:
            continue  # the master is re-executing
        if after and not set(after) & set(before):
            return before, after
    raise ApplyError(f"no new worker within {timeout:g}s after reload; see the HAProxy log")


def apply(
    text: str,
    target: Path,
    *,
    haproxy: str = "haproxy",
    master_socket: Path | None = None,
    master_pid: int | None = None,
    runtime_socket: Path | None = None,
    state_file: Path | None = None,
    force_reload: bool = False,
    timeout: float = 10.0,
) -> ApplyResult:
    """Install ``text`` at ``target`` and reload the master named by ``master_socket``
    (waits for the new worker) or ``master_pid`` (SIGUSR2, no wait), if any."""
    if state_file is not None:
        ensure_state_file(state_file)
    changed = write_validated(text, target, haproxy)
    if not (changed or force_reload) or (master_socket is None and master_pid is None):
        return ApplyResult(target, changed, reloaded=False)
    if runtime_socket is not None and state_file is not None:
        save_server_state(RuntimeApi(runtime_socket), state_file)
    if master_socket is not None:
        before, after = reload(master_socket, timeout)
        return ApplyResult(target, changed, True, before, after)
    assert master_pid is not None
    try:
        os.kill(master_pid, signal.SIGUSR2)
    except ProcessLookupError as exc:
        raise ApplyError(f"no HAProxy master with pid {master_pid}") from exc
    return ApplyResult(target, changed, reloaded=True)
