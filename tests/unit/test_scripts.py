"""The typed boundary to the Lua scripts: argument layout and reply decoding, no Redis."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any

import pytest

from services.common.messages import TALLY_GROUP, CloseEntry, Keys, VoteEntry
from services.common.scripts import (
    ENTRY_FIELDS,
    VOTE_FIELDS,
    VOTE_TYPE,
    ApplyArgs,
    ApplyResult,
    PollKeys,
    RuleArgs,
    ScriptReplyError,
    VoteCall,
    VoteKeys,
    VoteOutcome,
    VoteResult,
    VoteRules,
    apply_args,
    close_args,
    decode_apply,
    decode_close,
    decode_vote,
    decode_vote_batch,
    vote_batch_args,
    vote_batch_source,
    vote_call,
)
from services.ingest.appender import Appender

pytestmark = pytest.mark.unit

KEYS = Keys(prefix="t", partitions=4)


def lua(name: str) -> str:
    return resources.files("services.common").joinpath("lua", name).read_text()


LUA = lua("vote_batch.lua")


def entry(n: int = 0, **kw: Any) -> VoteEntry:
    fields: dict[str, Any] = {
        "poll": "p1",
        "option": "clap",
        "count": 3 + n,
        "device": f"dev{n}",
        "vote_id": f"vid{n}",
        "client_ts": 5,
        "recv_ts": 1_700_000_000_000 + n,
    }
    return VoteEntry(**{**fields, **kw})


def layout_of(source: str) -> dict[str, list[str]]:
    """The LAYOUT written into the registered script, read back from its first line."""
    first = source.splitlines()[0]
    assert first.startswith("local LAYOUT = {"), first
    return {
        name: re.findall(r"'([a-z_]+)'", names)
        for name, names in re.findall(r"(\w+) = \{([^{}]*)\}", first)
    }


def read_like_the_script(ks: list[str], args: list[Any]) -> list[dict[str, Any]]:
    """What vote_batch.lua sees for each vote: its keys, rules and entry fields by the
    names of the layout written into it, and the stream entry it would append. The same
    lookups as the script."""
    layout = layout_of(vote_batch_source())
    nk, nrl, nf = len(layout["keys"]), len(layout["rules"]), len(layout["fields"])
    n, nr = int(args[0]), int(args[1])
    rule_sets = [args[2 + s * nrl : 2 + (s + 1) * nrl] for s in range(nr)]
    first = 2 + nr * nrl
    votes = []
    for i in range(n):
        values = args[first + i * (1 + nf) : first + (i + 1) * (1 + nf)]
        keys = ks[1 + i * nk : 1 + (i + 1) * nk]
        fields = dict(zip(layout["fields"], values[1:], strict=True))
        votes.append(
            {
                "keys": dict(zip(layout["keys"], keys, strict=True)),
                "rules": dict(zip(layout["rules"], rule_sets[int(values[0]) - 1], strict=True)),
                "fingerprint": f"{fields['opt']}:{fields['n']}",
                "entry": {layout["type"][0]: layout["type"][1], **fields},
            }
        )
    assert len(args) == first + n * (1 + nf), "nothing may follow the last vote"
    assert len(ks) == 1 + n * nk
    return votes


def test_each_vote_is_found_by_name_where_the_script_looks() -> None:
    rules = [
        VoteRules(max_votes=1, rate_per_s=20, dedupe_ttl_s=60, max_votes_per_account=1),
        VoteRules(max_votes_per_account=1),
    ]
    entries = [entry(0), entry(1, option="boo")]
    # The second vote's device has no account: the account rule is off for it.
    accounts = ["a" * 32, ""]
    calls = [vote_call(KEYS, 2, e, r, a) for e, r, a in zip(entries, rules, accounts, strict=True)]
    ks, args = vote_batch_args(KEYS, 2, calls)

    assert ks[0] == KEYS.votes(2)
    seen = read_like_the_script(ks, args)
    assert len(seen) == 2
    for got, e, r, a in zip(seen, entries, rules, accounts, strict=True):
        assert got["keys"] == {
            "state": KEYS.state(2, e.poll),
            "dedupe": KEYS.dedupe(2, e.poll, e.device, e.vote_id),
            "device_votes": KEYS.device_votes(2, e.poll, e.device),
            "rate": KEYS.rate(2, e.device),
            "account_votes": KEYS.account_votes(2, e.poll, a or "-"),
        }
        assert got["fingerprint"] == f"{e.option}:{e.count}"
        assert got["rules"] == {
            "max_votes": r.max_votes,
            "max_account_votes": r.max_votes_per_account if a else 0,
            "rate_per_s": r.rate_per_s,
            "ttl_s": r.dedupe_ttl_s,
        }
        # The appended entry is exactly the vote, as the tally decodes it.
        assert got["entry"] == e.to_fields()
        raw = {k.encode(): str(v).encode() for k, v in got["entry"].items()}
        assert VoteEntry.from_fields(raw) == e


def test_an_empty_batch_is_two_counts() -> None:
    ks, args = vote_batch_args(KEYS, 0, [])
    assert ks == [KEYS.votes(0)]
    assert args == [0, 0]
    assert read_like_the_script(ks, args) == []


def test_votes_sharing_rules_send_them_once() -> None:
    same = VoteRules(max_votes=2, rate_per_s=5)
    calls = [vote_call(KEYS, 1, entry(i), same) for i in range(3)]
    calls.append(vote_call(KEYS, 1, entry(3), VoteRules(max_votes=9)))
    _, args = vote_batch_args(KEYS, 1, calls)
    assert args[:2] == [4, 2]
    assert args[2:10] == [*calls[0].rules, *calls[3].rules]
    # Each vote: the number of its rule set, then its entry's values; nothing else.
    assert args[10:] == [
        x for i, c in zip((1, 1, 1, 2), calls, strict=True) for x in (i, *c.values)
    ]
    assert [
        v["rules"]["max_votes"] for v in read_like_the_script(*vote_batch_args(KEYS, 1, calls))
    ] == [2, 2, 2, 9]


def test_a_vote_call_is_built_once_and_reused_as_is() -> None:
    call = vote_call(KEYS, 1, entry(), VoteRules())
    _, first = vote_batch_args(KEYS, 1, [call])
    _, again = vote_batch_args(KEYS, 1, [call, call])
    # Resending (after NOSCRIPT) lays out the same values; the vote's part is not rebuilt.
    assert again[len(first) :] == [1, *call.values]
    assert isinstance(call, VoteCall) and isinstance(call.keys, VoteKeys)
    assert isinstance(call.rules, RuleArgs)


def _lua_names(var: str, source: str = LUA) -> set[str]:
    m = re.search(r"for _, name in ipairs\(\{([^}]*)\}\) do\s+if " + var, source)
    assert m, f"the script checks no {var} names"
    return set(re.findall(r"'([a-z_]+)'", m.group(1)))


def test_the_script_asks_only_for_names_python_lays_out() -> None:
    assert _lua_names("key") == set(VoteKeys._fields)
    assert _lua_names("rule") == set(RuleArgs._fields)
    assert _lua_names("field") <= set(VOTE_FIELDS)
    layout = layout_of(vote_batch_source())
    assert layout == {
        "keys": list(VoteKeys._fields),
        "rules": list(RuleArgs._fields),
        "fields": list(VOTE_FIELDS),
        "type": list(VOTE_TYPE),
    }
    # The entry the script writes is the one the tally decodes, field for field.
    assert (VOTE_TYPE[0], *VOTE_FIELDS) == ENTRY_FIELDS
    assert VoteEntry("", "", 0, "", "", 0, 0).to_fields()[VOTE_TYPE[0]] == VOTE_TYPE[1]


def test_the_script_answers_exactly_the_outcomes_python_decodes() -> None:
    declared = dict(re.findall(r"^local ([A-Z_]+) = '([a-z_]+)'", LUA, flags=re.M))
    assert declared == {o.name: o.value for o in VoteOutcome}
    assert "{202" not in LUA and "409" not in LUA, "HTTP statuses belong to the handler"
    assert "vote.lua" not in LUA.replace("vote_batch.lua", "")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"accepted", 7], VoteResult(VoteOutcome.ACCEPTED, accepted=7)),
        ([b"replayed", 7], VoteResult(VoteOutcome.REPLAYED, accepted=7)),
        # Past the results built once, and a count sent as text.
        ([b"accepted", 250], VoteResult(VoteOutcome.ACCEPTED, accepted=250)),
        ([b"replayed", b"3"], VoteResult(VoteOutcome.REPLAYED, accepted=3)),
        ([b"not_open", b"closed"], VoteResult(VoteOutcome.NOT_OPEN, state="closed")),
        ([b"not_open", b"draft"], VoteResult(VoteOutcome.NOT_OPEN, state="draft")),
        ([b"rate_limited", 640], VoteResult(VoteOutcome.RATE_LIMITED, retry_after_ms=640)),
        ([b"rate_limited", -1], VoteResult(VoteOutcome.RATE_LIMITED, retry_after_ms=0)),
        ([b"vote_limit", 1], VoteResult(VoteOutcome.VOTE_LIMIT, max_votes=1)),
        ([b"account_limit", 2], VoteResult(VoteOutcome.ACCOUNT_LIMIT, max_votes=2)),
        ([b"id_reused", 0], VoteResult(VoteOutcome.ID_REUSED)),
        # A client with decode_responses=True hands over text, not bytes.
        (["accepted", 2], VoteResult(VoteOutcome.ACCEPTED, accepted=2)),
        (["not_open", "closed"], VoteResult(VoteOutcome.NOT_OPEN, state="closed")),
    ],
)
def test_replies_decode_to_typed_outcomes(reply: list[Any], expected: VoteResult) -> None:
    assert decode_vote(reply) == expected


def test_every_outcome_decodes() -> None:
    for outcome in VoteOutcome:
        assert decode_vote([outcome.value.encode(), 1]).outcome is outcome


@pytest.mark.parametrize(
    "reply",
    [
        [202, 7, 0],
        [b"ok", 1],
        [b"accepted"],
        b"accepted",
        None,
        [b"ACCEPTED", 1],
        [b"accepted", b"many"],
        [[b"accepted"], 1],
    ],
)
def test_a_reply_out_of_step_is_an_error_not_a_guess(reply: Any) -> None:
    with pytest.raises(ScriptReplyError):
        decode_vote(reply)


def test_a_batch_decodes_in_order() -> None:
    got = decode_vote_batch([[b"accepted", 1], [b"id_reused", 0]])
    assert [r.outcome for r in got] == [VoteOutcome.ACCEPTED, VoteOutcome.ID_REUSED]


async def test_the_appender_answers_each_vote_with_its_own_outcome() -> None:
    loop = asyncio.get_running_loop()
    call = vote_call(KEYS, 0, entry(), VoteRules())
    futs = [loop.create_future() for _ in range(3)]
    pending = [(call, f) for f in futs]
    Appender._resolve(pending, [[b"accepted", 3], [b"bogus", 0], [b"rate_limited", 10]])
    assert futs[0].result() == VoteResult(VoteOutcome.ACCEPTED, accepted=3)
    with pytest.raises(ScriptReplyError):
        futs[1].result()
    assert futs[2].result().retry_after_ms == 10


async def test_the_appender_refuses_a_reply_of_the_wrong_length() -> None:
    loop = asyncio.get_running_loop()
    call = vote_call(KEYS, 0, entry(), VoteRules())
    futs = [loop.create_future() for _ in range(2)]
    Appender._resolve([(call, f) for f in futs], [[b"accepted", 3]])
    for f in futs:
        with pytest.raises(ScriptReplyError):
            f.result()


def test_apply_entries_are_found_by_name_where_the_script_looks() -> None:
    source = lua("apply.lua")
    assert _lua_names("pk", source) == set(PollKeys._fields)
    assert _lua_names("arg", source) == set(ApplyArgs._fields)

    entries: list[tuple[bytes, VoteEntry | CloseEntry]] = [
        (b"1-0", entry(0, recv_ts=5_500)),
        (b"1-1", entry(1, poll="p2", recv_ts=5_900)),
        (b"1-2", entry(2, recv_ts=6_100)),
        (b"1-3", CloseEntry("p1")),
    ]
    ks, args = apply_args(KEYS, 3, entries, 120)
    assert args[:3] == [TALLY_GROUP, 4, 120]
    npk, na = int(args[3]), int(args[4])
    pk_names, arg_names = args[5 : 5 + npk], args[5 + npk : 5 + npk + na]
    first = 5 + npk + na
    assert len(args) == first + len(entries) * na
    seen = [
        dict(zip(arg_names, args[first + i * na : first + (i + 1) * na], strict=True))
        for i in range(len(entries))
    ]
    for (entry_id, e), got in zip(entries, seen, strict=True):
        assert got["id"] == entry_id.decode() and got["poll"] == e.poll
        # Lua's KEYS count from 1: the poll's keys start at index poll_keys.
        at = int(got["poll_keys"]) - 1
        poll_keys = dict(zip(pk_names, ks[at : at + npk], strict=True))
        assert poll_keys == {
            "counts": KEYS.counts(3, e.poll),
            "version": KEYS.version(3, e.poll),
            "closed": KEYS.closed(3, e.poll),
        }
        if isinstance(e, VoteEntry):
            sec = e.recv_ts // 1000
            assert (got["kind"], got["option"], got["taps"], got["sec"]) == (
                "v",
                e.option,
                e.count,
                sec,
            )
            assert ks[int(got["second_key"]) - 1] == KEYS.second(3, e.poll, sec)
        else:
            assert (got["kind"], got["second_key"]) == ("c", 0)
    # Each poll's keys and each (poll, second) once: p1, p2, and seconds 5 and 6.
    assert len(ks) == 2 + 2 * npk + 3


def test_apply_replies_decode() -> None:
    assert decode_apply([3, 1, [b"1-3"]]) == ApplyResult(3, 1, [b"1-3"])
    applied, closes, deferred = decode_apply([0, 0, []])
    assert (applied, closes, deferred) == (0, 0, [])
    for bad in ([1, 2], None, [b"x", 0, []]):
        with pytest.raises(ScriptReplyError):
            decode_apply(bad)


def test_close_layout_and_reply() -> None:
    assert close_args(KEYS, 1, "p1") == ([KEYS.state(1, "p1"), KEYS.votes(1)], ["p1"])
    assert decode_close(1) is True and decode_close(0) is False
    with pytest.raises(ScriptReplyError):
        decode_close(b"OK")


def test_a_devices_placement_is_its_votes_partition_and_account_key() -> None:
    from services.common.oidc import account_key
    from services.common.scripts import placements, vote_partition

    place = placements(KEYS, size=2)
    for device in (f"dev{i}" for i in range(8)):
        assert place(device, None) == (vote_partition(KEYS, device), "")
        acc = account_key("viewer-" + device)
        # An account-bound device votes in its account's partition, whatever the device.
        assert place(device, "viewer-" + device) == (vote_partition(KEYS, device, acc), acc)
    assert {place(f"dev{i}", "v")[0] for i in range(8)} == {place("x", "v")[0]}
