"""The vote path reads ``Authorization: Bearer <token>`` as apps send it without the
general parser; every other spelling must give what the parser gives."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from services.common.tokens import TokenService
from services.ingest.gateway.auth import caller_by
from services.ingest.gateway.errors import ApiError

SERVICE = TokenService(SecretStr("s" * 64), ttl_s=60)
TOKEN = SERVICE.issue().token


@pytest.mark.parametrize(
    "header",
    [
        "Bearer {t}",
        "bearer {t}",
        "Bearer  {t}",
        "Bearer {t} ",
        "Bearer {t}\t",
        "BEARER \t{t}",
    ],
)
def test_every_spelling_of_a_good_token_names_its_device(header: str) -> None:
    request = make_mocked_request(
        "POST", "/v1/polls/p/votes", headers={"Authorization": header.format(t=TOKEN)}
    )
    assert caller_by(SERVICE, False, request) == SERVICE.caller(TOKEN)


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Bearer\t" + TOKEN, "Basic x"])
def test_anything_else_is_a_401_naming_the_header(header: str) -> None:
    request = make_mocked_request("POST", "/v1/polls/p/votes", headers={"Authorization": header})
    with pytest.raises(ApiError) as refused:
        caller_by(SERVICE, False, request)
    assert (refused.value.status, refused.value.body.field) == (401, "Authorization")
