"""The archive's canonical line is exactly what the csv module writes, so the digest is
the plain SHA-256 of a standard CSV file whatever the ids contain."""

from __future__ import annotations

import csv
import io

import pytest

from services.common.archive import HEADER, ArchivedVote, csv_line

pytestmark = pytest.mark.unit


def _csv(values: tuple[object, ...]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode()


@pytest.mark.parametrize(
    "device",
    ["0f3a9c", "with,comma", 'with"quote', "with\nnewline", "with\rreturn", " lead", "", "日本"],
)
def test_a_line_is_the_csv_modules_line(device: str) -> None:
    values = ("v-1", device, "opt", 3, 0, 1700000000000, 2, "1700000000000-7")
    assert csv_line(values) == _csv(values)


def test_the_header_names_the_columns_in_order() -> None:
    assert HEADER == b"vote_id,device,option,count,client_ts,recv_ts,partition,stream_id\n"


def test_the_row_hash_covers_the_poll_and_every_field() -> None:
    base = ArchivedVote("poll", "v", "d", "o", 1, 0, 5, 0, "5-0")
    hashes = {
        base.row_hash(),
        ArchivedVote("other", "v", "d", "o", 1, 0, 5, 0, "5-0").row_hash(),
        ArchivedVote("poll", "v", "d", "o2", 1, 0, 5, 0, "5-0").row_hash(),
        ArchivedVote("poll", "v", "d", "o", 2, 0, 5, 0, "5-0").row_hash(),
        ArchivedVote("poll", "v", "d", "o", 1, 0, 5, 0, "5-1").row_hash(),
    }
    assert len(hashes) == 5
