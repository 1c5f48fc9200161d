"""Every rendered variant passes ``haproxy -c`` with zero warnings; apply never installs
a config that does not."""

from __future__ import annotations

import base64
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from buzzer.certs import make_cert
from lb.apply import ApplyError, apply, ensure_state_file, validate
from lb.render import render
from tests.support.variants import PARAMS, VARIANTS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("certs")
    return str(make_cert(d, "ecdsa")), str(make_cert(d, "rsa"))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_passes_haproxy_check(
    name: str, certs: tuple[str, str], tmp_path: Path
) -> None:
    settings, inventory = VARIANTS[name]
    keys = tmp_path / "ticket.keys"
    # Three 80-byte keys (AES-256 tickets), one per line, as HAProxy reads them.
    keys.write_text("\n".join(base64.b64encode(os.urandom(80)).decode() for _ in range(3)) + "\n")
    local = replace(
        settings,
        runtime_socket=str(tmp_path / "admin.sock"),
        certs=certs if settings.certs else (),
        tls_ticket_keys=str(keys) if settings.tls_ticket_keys else None,
        server_state_file=str(tmp_path / "state") if settings.server_state_file else None,
    )
    if local.server_state_file:
        ensure_state_file(local.server_state_file)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(PARAMS, inventory, local))
    validate(cfg)


def test_rsa_only_and_ecdsa_only_certificates_pass(certs: tuple[str, str], tmp_path: Path) -> None:
    settings, inventory = VARIANTS["tls-local"]
    for one in certs:
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(PARAMS, inventory, replace(
            settings, certs=(one,), server_state_file=None,
            runtime_socket=str(tmp_path / "a.sock"))))  # fmt: skip
        validate(cfg)


def test_apply_installs_atomically_and_refuses_a_bad_config(tmp_path: Path) -> None:
    settings, inventory = VARIANTS["no-limit-no-log"]
    settings = replace(settings, server_state_file=None, runtime_socket=str(tmp_path / "a.sock"))
    good = render(PARAMS, inventory, settings)
    target = tmp_path / "haproxy.cfg"
    first = apply(good, target)
    assert (first.changed, first.reloaded) == (True, False)
    os.chmod(target, 0o640)
    assert apply(good, target).changed is False

    bad = good.replace("balance roundrobin", "balance nonsense")
    with pytest.raises(ApplyError, match="(?s)not installed.*balance only supports"):
        apply(bad, target)
    assert target.read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg"]

    changed = good.replace("timeout queue 5s", "timeout queue 6s")
    assert apply(changed, target).changed
    assert target.read_text() == changed
    assert target.stat().st_mode & 0o777 == 0o640
