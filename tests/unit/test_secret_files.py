"""Files that hold a secret are owner-only (mode 600) from the moment they exist, and the
load test writes no admin token at all."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from buzzer import secretfile, stack
from buzzer.certs import make_cert
from buzzer.secretfile import write_secret
from buzzer.stack import load_secrets
from loadtest.plan import Plan, PollPlan

pytestmark = pytest.mark.unit


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    # With umask 0 a file made by a plain write_text would be 666: the test sees it.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_secret_file_is_600_before_it_holds_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, bytes]] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append((mode(Path(src)), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(secretfile.os, "replace", spy)
    path = write_secret(tmp_path / "token", "s3cret")
    assert seen == [(0o600, b"s3cret")]
    assert mode(path) == 0o600 and path.read_text() == "s3cret"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left


def test_an_existing_world_readable_file_becomes_600(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("old")
    path.chmod(0o644)
    write_secret(path, b"new")
    assert mode(path) == 0o600 and path.read_bytes() == b"new"


def test_buzzer_up_secrets_are_600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUZZER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("BUZZER_TOKEN_SECRET", raising=False)
    (tmp_path / "admin-token").write_text("from an older version")
    (tmp_path / "admin-token").chmod(0o644)
    # A chmod after the write would end at 600 too: that both go through write_secret
    # (600 from creation, tested above) is what keeps them private throughout.
    written: list[str] = []

    def spy(path: Path, data: str | bytes) -> Path:
        written.append(path.name)
        return write_secret(path, data)

    monkeypatch.setattr(stack, "write_secret", spy)
    out = load_secrets(tmp_path)
    assert sorted(written) == ["admin-token", "secrets.json"]
    assert mode(tmp_path / "secrets.json") == 0o600
    assert mode(tmp_path / "admin-token") == 0o600
    assert (tmp_path / "admin-token").read_text() == out["BUZZER_ADMIN_TOKEN"]
    assert json.loads((tmp_path / "secrets.json").read_text()) == out


def test_the_self_signed_key_is_600(tmp_path: Path) -> None:
    pem = make_cert(tmp_path, "ecdsa")
    assert "PRIVATE KEY" in pem.read_text()
    assert mode(pem) == 0o600


def _plan(token: str) -> Plan:
    poll = PollPlan(id="p1", title="t", kind="buzz", options=["a", "probe"], max_count=5,
                    open_at=0, close_at=1)  # fmt: skip
    return Plan(host="http://h", ws_host="ws://h", admin_token=token, profile="show",
                duration_s=10, scale=1, user_rate=2, viewers=1, out_dir="/tmp", polls=[poll])  # fmt: skip


def test_the_load_test_plan_holds_no_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plan.json"
    _plan("admin-s3cret").save(path)
    assert "admin-s3cret" not in path.read_text()
    assert "admin_token" not in json.loads(path.read_text())
    # Locust processes get it from the environment that `loadtest run` gives them.
    monkeypatch.setenv("BUZZER_ADMIN_TOKEN", "from-env")
    assert Plan.load(path).admin_token == "from-env"
    assert Plan.load(path, admin_token="given").admin_token == "given"
    assert "admin-s3cret" not in repr(_plan("admin-s3cret"))


def test_a_plan_written_before_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    data = json.loads(json.dumps(_plan("").__dict__, default=lambda o: o.__dict__))
    data["admin_token"] = "old"
    path.write_text(json.dumps(data))
    assert Plan.load(path, admin_token="new").admin_token == "new"
