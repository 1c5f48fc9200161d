"""Named operator tokens with no service running: who a token belongs to, which sets are
refused, and the file `buzzer up` keeps them in."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from buzzer.secretfile import write_secret
from buzzer.stack import operators_file
from services.common.tokens import OperatorFileError, Operators

pytestmark = pytest.mark.unit

MAYA, JO = "m" * 20, "j" * 20


def test_each_token_names_its_operator_and_admin_is_one_of_them() -> None:
    ops = Operators(SecretStr("short-admin"), {"Maya": SecretStr(MAYA), "jo@studio": SecretStr(JO)})
    assert ops.operator(MAYA) == "Maya"
    assert ops.operator(JO) == "jo@studio"
    assert ops.operator("short-admin") == "admin"
    for wrong in ("", MAYA[:-1], MAYA + "m", JO.upper(), "\udcff" + MAYA):
        assert ops.operator(wrong) is None


@pytest.mark.parametrize(
    ("named", "why"),
    [
        ({"Maya": "too-short"}, "16 characters"),
        ({"Maya": MAYA, "Jo": MAYA}, "also another operator's"),
        ({"": MAYA}, "short plain name"),
        ({"<script>": MAYA}, "short plain name"),
        ({"x" * 65: MAYA}, "short plain name"),
    ],
)
def test_sets_that_would_blur_who_acted_are_refused(named: dict[str, str], why: str) -> None:
    with pytest.raises(OperatorFileError, match=why):
        Operators(None, {k: SecretStr(v) for k, v in named.items()})


def test_the_file_adds_operators_and_the_settings_win_for_a_name(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "ops.json", json.dumps({"Maya": "f" * 20, "Jo": JO}))
    ops = Operators(SecretStr("a" * 20), {"Maya": SecretStr(MAYA)}, path)
    assert (ops.operator(MAYA), ops.operator(JO), ops.operator("f" * 20)) == ("Maya", "Jo", None)
    for bad in ("[]", '{"Maya": 3}'):
        write_secret(path, bad)
        with pytest.raises(OperatorFileError):
            Operators(None, None, path)


def test_buzzer_up_makes_an_empty_owner_only_operators_file_and_keeps_one_made(
    tmp_path: Path,
) -> None:
    path = operators_file(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Operators(None, None, path).operator("anything-at-all-long") is None
    write_secret(path, json.dumps({"Maya": MAYA}))
    assert operators_file(tmp_path / "state") == path
    assert Operators(None, None, path).operator(MAYA) == "Maya"
