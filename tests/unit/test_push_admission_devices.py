"""Push's connection slots behind carrier-grade NAT: sockets with a valid device token
count per device, the others per address, and an address holds thousands by default."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from services.common.settings import PushSettings
from services.push.admission import Admission, device_of
from services.push.protocol import Close

pytestmark = pytest.mark.unit

NAT = "100.64.0.1"  # one carrier-grade NAT address, thousands of phones behind it


def test_devices_behind_one_address_each_count_on_their_own() -> None:
    a = Admission(max_connections=10_000, max_per_ip=3, max_per_device=2)
    for phone in range(100):
        assert a.admit(NAT, f"device-{phone}") is None
        assert a.admit(NAT, f"device-{phone}") is None
    assert a.admit(NAT, "device-7") == (
        Close.TOO_MANY_FROM_ADDRESS,
        "too many connections from this device",
    )
    # Tokenless sockets from the same address have their own bound.
    for _ in range(3):
        assert a.admit(NAT) is None
    assert a.admit(NAT) == (Close.TOO_MANY_FROM_ADDRESS, "too many connections from this address")
    assert a.reserved == 203

    a.release(NAT, "device-7")
    assert a.admit(NAT, "device-7") is None
    for _ in range(2):
        a.release(NAT, "device-1")
    assert "device-1" not in a.per_device
    a.release(NAT)
    assert a.per_ip == {NAT: 2}


def test_the_defaults_let_thousands_share_an_address() -> None:
    settings = PushSettings(admin_token="x", token_secret="y" * 32)
    assert settings.max_connections_per_ip >= 5000
    assert settings.max_connections_per_device == 5
    a = Admission(
        settings.max_connections,
        settings.max_connections_per_ip,
        settings.max_connections_per_device,
    )
    assert all(a.admit(NAT) is None for _ in range(5000))


def test_only_a_verified_token_makes_a_device() -> None:
    def verify(token: str) -> str:
        if token != "good":
            raise ValueError("bad signature")
        return "device-1"

    def request(query: str = "", auth: str | None = None):  # type: ignore[no-untyped-def]
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        return make_mocked_request("GET", f"/v1/live{query}", headers=headers)

    assert device_of(request("?token=good"), verify) == "device-1"
    assert device_of(request(auth="good"), verify) == "device-1"
    # A made-up token would let one client dodge the address bound: it counts per address.
    assert device_of(request("?token=forged"), verify) is None
    assert device_of(request(), verify) is None
    assert device_of(request("?token=good"), None) is None
