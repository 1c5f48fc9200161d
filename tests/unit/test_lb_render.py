"""Golden files: ``LB_REGEN_GOLDEN=1 pytest tests/unit/test_lb_render.py`` rewrites them."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from lb.inventory import Server
from lb.planner import MEASURED_DEFAULTS, PlanInputs, plan
from lb.render import RenderParams, render
from tests.support.variants import BASE, PARAMS, TLS, VARIANTS

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parents[1] / "golden" / "lb"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_render_matches_golden(name: str) -> None:
    settings, inventory = VARIANTS[name]
    text = render(PARAMS, inventory, settings)
    path = GOLDEN / f"{name}.cfg"
    if os.environ.get("LB_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"rendered {name} differs from {path}"


def test_render_is_deterministic_whatever_the_inventory_order() -> None:
    settings, inventory = VARIANTS["tls"]
    shuffled = {k: list(reversed(v)) for k, v in reversed(list(inventory.items()))}
    assert render(PARAMS, shuffled, settings) == render(PARAMS, inventory, settings)


def test_maxconn_comes_from_the_plan() -> None:
    p = plan(PlanInputs(peak_votes_per_s=1000, viewers=300_000), MEASURED_DEFAULTS)
    text = render(p, {}, BASE)
    assert f"    maxconn {p.maxconn_per_node}\n" in text
    assert text.count(f"maxconn {p.maxconn_per_node}") == 2  # global and frontend


def test_inventory_fills_the_first_slots_and_templates_the_rest() -> None:
    servers = [Server("10.0.0.2", 8081), Server("10.0.0.1", 8081)]
    text = render(RenderParams(100), {"ingest": servers}, replace(BASE, slots=4))
    assert "    server ingest1 10.0.0.1:8081\n    server ingest2 10.0.0.2:8081\n" in text
    assert "    server-template ingest 3-4 127.0.0.1:8081 disabled\n" in text
    assert "    server-template push 4 127.0.0.1:8085 disabled\n" in text


def test_tls_routes_ecdsa_first_and_redirects() -> None:
    text = render(PARAMS, {}, TLS)
    assert "ssl crt /etc/buzzer/tls/vote.ecdsa.pem crt /etc/buzzer/tls/vote.rsa.pem" in text
    assert "http-request redirect scheme https code 301 unless { ssl_fc }" in text
    local = render(PARAMS, {}, replace(TLS, redirect_to_https=False))
    assert "redirect" not in local


@pytest.mark.parametrize(
    "settings, inventory, message",
    [
        (replace(BASE, https_port=443), {}, "certificate"),
        (BASE, {"tally": [Server("10.0.0.1", 1)]}, "unknown backends"),
        (replace(BASE, slots=1), {"ingest": [Server("a", 1), Server("b", 1)]}, "slots"),
    ],
)
def test_render_rejects_impossible_inputs(settings, inventory, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        render(PARAMS, inventory, settings)
