"""h2load's report, parsed: a captured report in, the figures the benches use out."""

from __future__ import annotations

import pytest

from bench.tools.h2load import parse

pytestmark = pytest.mark.unit

REPORT = """starting benchmark...
spawning thread #0: 2 total client(s). 50 total requests
Application protocol: h2
progress: 100% done

finished in 111.12ms, 449.95 req/s, 102.82KB/s
requests: 50 total, 50 started, 50 done, 48 succeeded, 2 failed, 1 errored, 1 timeout
status codes: 47 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 11.43KB (11700) total, 6.05KB (6200) headers (space savings 0.00%), 3.66KB (3750) data
                     min         max         mean         sd        +/- sd
time for request:      275us     24.04ms      4.18ms      6.49ms    88.00%
time for connect:      725us       907us       816us       128us   100.00%
"""


def test_parse_reads_rate_outcomes_protocol_and_request_times() -> None:
    r = parse(REPORT)
    assert (r.rps, r.requests, r.succeeded, r.status_2xx) == (449.95, 50, 48, 47)
    assert (r.failed, r.errored, r.timeout) == (2, 1, 1)
    # Failures, errors, timeouts and the one 4xx among the "succeeded".
    assert r.errors == 5
    assert r.protocol == "h2"
    assert r.request_ms == pytest.approx({"min": 0.275, "max": 24.04, "mean": 4.18})


def test_parse_says_what_it_could_not_read() -> None:
    with pytest.raises(RuntimeError, match="not understood"):
        parse("h2load: unknown option --bogus\n")
    plain = parse(REPORT.replace("Application protocol: h2\n", ""))
    assert plain.protocol == ""
