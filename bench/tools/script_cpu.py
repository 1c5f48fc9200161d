"""Redis CPU per vote of ``vote_batch.lua``, as the checkout on ``PYTHONPATH`` lays out
its calls: ``python bench/tools/script_cpu.py PORT BATCHES PER_BATCH`` prints votes per
Redis CPU-second, one number.

Run by path, not as a module, so that ``services`` comes from ``PYTHONPATH``: ``bench
redis --against REV`` runs it once for another revision's worktree and once for this
checkout, alternating, against one ``redis-server``. A revision before
``vote_batch_source`` sent the script's layout with every call, and registered the file
as it is: both are read here.
"""

from __future__ import annotations

import sys
import uuid

import redis


def main(port: int, batches: int, per: int) -> None:
    from services.common import scripts
    from services.common.messages import Keys, VoteEntry
    from services.common.scripts import VoteRules, vote_batch_args, vote_call

    make_source = getattr(scripts, "vote_batch_source", None)
    source = make_source() if make_source else scripts._source("vote_batch.lua")
    r = redis.Redis(port=port)
    keys = Keys(prefix="cpu" + uuid.uuid4().hex[:8], partitions=4)
    sha = r.script_load(source)
    r.set(keys.state(1, "p1"), "open")
    rules = VoteRules(max_votes=1, rate_per_s=10, dedupe_ttl_s=3600)
    calls = []
    for _ in range(batches):
        votes = [
            vote_call(
                keys,
                1,
                VoteEntry("p1", "o3", 1, uuid.uuid4().hex, str(uuid.uuid4()), 0, 1_796_000_000_000),
                rules,
            )
            for _ in range(per)
        ]
        calls.append(vote_batch_args(keys, 1, votes))

    def cpu() -> float:
        info = r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    before = cpu()
    pipe = r.pipeline(transaction=False)
    for i, (ks, args) in enumerate(calls, 1):
        pipe.evalsha(sha, len(ks), *ks, *args)
        if i % 50 == 0 or i == len(calls):
            for reply in pipe.execute():
                # Every vote accepted: a refusal costs less, and would flatter the figure.
                if any(outcome != b"accepted" for outcome, _ in reply):
                    raise SystemExit(f"a vote was not accepted: {reply[:2]}")
    used = cpu() - before
    r.delete(*r.keys(f"{keys.prefix}:*"))
    print(f"{batches * per / used:.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
