"""The operator check follows the route the router matched, not the spelling of the path:
aiohttp matches the percent-decoded path, so ``/v1/%61dmin/shows`` is the admin route and
must be refused without an operator token, like ``/v1/admin/shows``."""

from __future__ import annotations

from typing import Any

import pytest
import yarl

from services.ingest.app import create_app
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

SPELLINGS = ["/v1/admin/shows", "/v1/%61dmin/shows", "/v1/admin/%73hows"]


@pytest.mark.parametrize("path", SPELLINGS)
async def test_every_spelling_of_an_admin_route_needs_the_operator_token(
    aiohttp_client: Any, ingest_settings: Any, redis: Any, path: str
) -> None:
    c = await aiohttp_client(create_app(ingest_settings))
    url = yarl.URL(path, encoded=True)
    refused = await c.post(url, json={"name": "sneaky"})
    # Either refused by the operator check or matched no route: never served.
    assert refused.status in (401, 404), await refused.text()
    assert refused.content_type == "application/json"
    listed = await c.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if refused.status == 401:
        # The same spelling with the token reaches the route: the check was on it.
        assert listed.status == 200
