"""Run HAProxy as a child process in master-worker mode: for tests, the bench and
``buzzer up``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from lb import apply as apply_mod
from lb.runtime import MasterCli, RuntimeApi


class HaproxyError(Exception):
    pass


class HaproxyProcess:
    """One HAProxy master and its worker, with the config at ``workdir/haproxy.cfg`` and
    the master CLI at ``workdir/master.sock``.

    :param runtime_socket: the admin stats socket the config declares; waited for on start.
    :param state_file: the config's ``server-state-file``, saved before every reload.
    :param cpu: pin master and worker to this CPU (``taskset``).
    :param log_path: HAProxy's stdout/stderr; ``None`` inherits ours.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        runtime_socket: Path | None = None,
        state_file: Path | None = None,
        haproxy: str = "haproxy",
        cpu: int | None = None,
        log_path: Path | None = None,
        validate: bool = True,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "haproxy.cfg"
        self.master_socket = workdir / "master.sock"
        self.runtime_socket = runtime_socket
        self.state_file = state_file
        self.haproxy = haproxy
        self.cpu = cpu
        self.log_path = log_path
        self.validate = validate
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def master_pid(self) -> int:
        if self._proc is None:
            raise HaproxyError("not started")
        return self._proc.pid

    @property
    def master(self) -> MasterCli:
        return MasterCli(self.master_socket)

    @property
    def runtime(self) -> RuntimeApi:
        if self.runtime_socket is None:
            raise HaproxyError("no runtime socket configured")
        return RuntimeApi(self.runtime_socket)

    def worker_pids(self) -> list[int]:
        return self.master.worker_pids()

    def start(self, config_text: str, timeout: float = 10.0) -> None:
        if self._proc is not None:
            raise HaproxyError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.state_file is not None:
            apply_mod.ensure_state_file(self.state_file)
        if self.validate:
            apply_mod.write_validated(config_text, self.config_path, self.haproxy)
        else:
            self.config_path.write_text(config_text)
        self.master_socket.unlink(missing_ok=True)
        cmd = [
            self.haproxy,
            "-W",
            "-S",
            f"{self.master_socket},mode,600",
            "-f",
            str(self.config_path),
        ]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as HAProxy
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise HaproxyError(
                    f"haproxy exited with {self._proc.returncode} on start: {self.log_tail()}"
                )
            try:
                if self.worker_pids() and (
                    self.runtime_socket is None or self.runtime.command("show info")
                ):
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise HaproxyError(f"haproxy not ready within {timeout:g}s ({last}): {self.log_tail()}")

    def reload(
        self, config_text: str | None = None, timeout: float = 10.0
    ) -> apply_mod.ApplyResult:
        """Hitless reload, with a new config if given (validated first; a bad one raises
        :class:`lb.apply.ApplyError` and leaves the running config alone)."""
        return apply_mod.apply(
            config_text if config_text is not None else self.config_path.read_text(),
            self.config_path,
            haproxy=self.haproxy,
            master_socket=self.master_socket,
            runtime_socket=self.runtime_socket,
            state_file=self.state_file,
            force_reload=True,
            timeout=timeout,
        )

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 5.0, drain: float = 2.0) -> None:
        """Soft stop, cut short after ``drain`` seconds; killed if still there after
        ``timeout`` more."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # SIGUSR1 is HAProxy's normal stop: the workers finish their requests and exit
            # 0. SIGTERM makes each worker exit 143, which the master logs as an [ALERT]
            # on every stop. Open tunnels (websockets) would hold a soft stop until
            # hard-stop-after, but tests and `buzzer up` want it gone: past ``drain``
            # they are cut with SIGTERM, and then the ALERT is true.
            os.kill(proc.pid, signal.SIGUSR1)
            try:
                proc.wait(drain)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.master_socket.unlink(missing_ok=True)

    def __enter__(self) -> HaproxyProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
