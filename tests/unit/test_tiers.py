"""The tiers table is the only source of ports: docker-compose.yml can't import it, so
it is checked against it here, and so is every Python default that reads it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import tiers
from infra.runsheet import DEFAULT_PORTS, load, port_of
from lb.render import RenderSettings
from services.common.settings import IngestSettings, PushSettings, TallySettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
APP = {
    name: svc
    for name, svc in COMPOSE.items()
    if svc.get("image") == "buzzer:local" and svc["command"][0] == "serve"
}


def test_every_tier_is_served_by_docker_compose() -> None:
    assert {svc["command"][1] for svc in APP.values()} == set(tiers.BY_NAME)


@pytest.mark.parametrize("name", sorted(APP))
def test_compose_command_listens_on_the_tier_port(name: str) -> None:
    command = APP[name]["command"]
    port = int(command[command.index("--port") + 1])
    assert port == tiers.BY_NAME[command[1]].port


@pytest.mark.parametrize("name", sorted(APP))
def test_compose_healthcheck_asks_the_tier_port(name: str) -> None:
    tier = tiers.BY_NAME[APP[name]["command"][1]]
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)/", APP[name]["healthcheck"]["test"][-1])
    assert urls == [str(tier.port)]


def test_compose_publishes_haproxy_on_the_table_ports() -> None:
    published = {tuple(map(int, p.split(":"))) for p in COMPOSE["haproxy"]["ports"]}
    assert (tiers.HAPROXY_HTTP_PORT, tiers.HAPROXY_HTTP_PORT) in published
    assert (tiers.HAPROXY_STATS_PORT, tiers.HAPROXY_STATS_PORT) in published


def test_settings_default_to_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BUZZER_PORT", "BUZZER_TALLY_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert IngestSettings().port == tiers.INGEST.port
    assert TallySettings().port == tiers.TALLY.port
    assert PushSettings().port == tiers.PUSH.port


def test_lb_backends_are_the_tiers_behind_the_lb() -> None:
    settings = RenderSettings()
    assert settings.backend_ports == {"ingest": tiers.INGEST.port, "push": tiers.PUSH.port}
    assert settings.stats_port == tiers.HAPROXY_STATS_PORT


def test_infra_defaults_and_the_example_run_sheet_agree_with_the_table() -> None:
    for t in tiers.SERVICES:
        assert DEFAULT_PORTS[t.name] == t.port  # type: ignore[index]
    sheet = load(ROOT / "examples" / "runsheet.yaml")
    for t in tiers.SERVICES:
        assert port_of(sheet, t.name) == t.port  # type: ignore[arg-type]
