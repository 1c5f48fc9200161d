"""The API contract as an OpenAPI 3.1 document, schemas generated from the msgspec types."""

from __future__ import annotations

from typing import Any

import msgspec

from services.common.api import (
    DeviceIn,
    DeviceIssued,
    ErrorBody,
    PollIn,
    ShowIn,
    VoteAccepted,
    VoteRequest,
    VoteStatus,
)
from services.common.messages import PollDef, TallyUpdate
from services.ingest.gateway.admin import PollOut, ResultOut, ShowOut
from services.ingest.gateway.audit import MAX_LIMIT, AuditPage

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_ERRORS = {
    400: "Malformed JSON or a field of the wrong type or range",
    401: "Missing, forged, expired or wrong-audience token (or ID token)",
    403: "The device token is not bound to the viewer account this poll or deployment needs",
    404: "Unknown poll, option or show",
    409: "Poll not in a state that allows this",
    413: "Body too large",
    415: "Content-Type is not application/json",
    422: "A rule of the poll is broken",
    429: "Over the rate limit; see Retry-After",
    503: "Overloaded or the vote store is away; retry after Retry-After with the same vote_id",
}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in codes:
        resp = _json("ErrorBody", _ERRORS[c])
        if c in (429, 503):
            resp["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        out[str(c)] = resp
    return out


_POLL = {"name": "poll", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_DEVICE: list[dict[str, list[str]]] = [{"device": []}]


def _op(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    # operationId names the method of a generated client (castVote, not post_v1_polls_...).
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            VoteRequest,
            VoteAccepted,
            VoteStatus,
            DeviceIn,
            DeviceIssued,
            ErrorBody,
            PollDef,
            TallyUpdate,
            ShowIn,
            ShowOut,
            PollIn,
            PollOut,
            ResultOut,
            AuditPage,
        ],
        ref_template=_REF,
    )
    ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    paths: dict[str, Any] = {
        "/v1/devices": {
            "post": _op(
                "registerDevice",
                "Register a device; returns its bearer token. With an id_token the device is "
                "bound to the viewer's account (an empty body registers an anonymous device "
                "where the deployment allows it).",
                {
                    "201": _json("DeviceIssued", "Token issued"),
                    **_errors(400, 401, 413, 415, 422, 429, 503),
                },
                security=[],
                requestBody={**_body("DeviceIn"), "required": False},
            )
        },
        "/v1/polls/{poll}/votes": {
            "post": _op(
                "castVote",
                "Cast a vote (or a batch of taps). 202 only once the vote is durable in Redis; "
                "a retry with the same vote_id gets the same answer and counts once.",
                {
                    "202": _json("VoteAccepted", "Accepted"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
                },
                parameters=[_POLL],
                requestBody=_body("VoteRequest"),
                security=_DEVICE,
            )
        },
        "/v1/polls/{poll}/votes/{vote_id}": {
            "get": _op(
                "getMyVote",
                "Was my vote counted? The calling device's own vote: accepted, archived for "
                "the recount, with its option and count. 404 for another device's vote id.",
                {"200": _json("VoteStatus", "The vote"), **_errors(400, 401, 404, 503)},
                parameters=[
                    _POLL,
                    {
                        "name": "vote_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    },
                ],
                security=_DEVICE,
            )
        },
        "/v1/polls/{poll}": {
            "get": _op(
                "getPoll",
                "A poll, its options and state",
                {"200": _json("PollDef", "The poll"), **_errors(404)},
                parameters=[_POLL],
                security=[],
            )
        },
        "/v1/polls/{poll}/tally": {
            "get": _op(
                "getTally",
                "Live count per option, total, rates over the last 10 s, version",
                {"200": _json("TallyUpdate", "The live tally"), **_errors(404)},
                parameters=[_POLL],
                security=[],
            )
        },
        "/v1/openapi.json": {"get": _op("getOpenApi", "This document", {"200": ok}, security=[])},
        "/v1/admin/shows": {
            "get": _op("listShows", "List shows", {"200": ok, **_errors(401)}, security=_ADMIN),
            "post": _op(
                "createShow",
                "Create a show",
                {"201": _json("ShowOut", "Created"), **_errors(400, 401, 409, 413, 415)},
                requestBody=_body("ShowIn"),
                security=_ADMIN,
            ),
        },
        "/v1/admin/polls": {
            "get": _op(
                "listPolls",
                "List polls (optionally ?show_id=)",
                {"200": ok, **_errors(401)},
                parameters=[
                    {
                        "name": "show_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                security=_ADMIN,
            ),
            "post": _op(
                "createPoll",
                "Create a poll (draft)",
                {"201": _json("PollOut", "Created"), **_errors(400, 401, 404, 409, 413, 415, 422)},
                requestBody=_body("PollIn"),
                security=_ADMIN,
            ),
        },
        "/v1/admin/polls/{poll}/open": {
            "post": _op(
                "openPoll",
                "Open a poll for votes",
                {"200": _json("PollOut", "Opened"), **_errors(401, 404, 409)},
                parameters=[_POLL],
                security=_ADMIN,
            )
        },
        "/v1/admin/polls/{poll}/close": {
            "post": _op(
                "closePoll",
                "Close a poll; the final result is frozen once the streams drain",
                {"200": _json("PollOut", "Closed"), **_errors(401, 404, 409)},
                parameters=[_POLL],
                security=_ADMIN,
            )
        },
        "/v1/admin/polls/{poll}/result.json": {
            "get": _op(
                "getResultJson",
                "A poll's result from PostgreSQL (final once marked so)",
                {"200": _json("ResultOut", "Result"), **_errors(401, 404)},
                parameters=[_POLL],
                security=_ADMIN,
            )
        },
        "/v1/admin/polls/{poll}/result.csv": {
            "get": _op(
                "getResultCsv",
                "The same result as CSV",
                {
                    "200": {
                        "description": "CSV",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404),
                },
                parameters=[_POLL],
                security=_ADMIN,
            )
        },
        "/v1/admin/audit": {
            "get": _op(
                "listAudit",
                "Recent admin actions, newest first: who (operator name), what, when",
                {"200": _json("AuditPage", "The audit log"), **_errors(400, 401)},
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": 50,
                        },
                    }
                ],
                security=_ADMIN,
            )
        },
        "/healthz": {"get": _op("getHealth", "Liveness", {"200": ok}, security=[])},
        "/readyz": {
            "get": _op(
                "getReadiness",
                "Readiness: dependencies reachable",
                {"200": ok, "503": ok},
                security=[],
            )
        },
        "/metrics": {"get": _op("getMetrics", "Prometheus metrics", {"200": text}, security=[])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Buzzer vote API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "device": {"type": "http", "scheme": "bearer", "description": "POST /v1/devices"},
                "admin": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An operator token: BUZZER_ADMIN_TOKEN or BUZZER_OPERATOR_TOKENS(_FILE)",
                },
            },
        },
    }
