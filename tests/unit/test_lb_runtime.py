from __future__ import annotations

import pytest

from lb.runtime import MasterCli, RuntimeApi

pytestmark = pytest.mark.unit

SERVERS_STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 ingest 1 ingest1 127.0.0.1 2 0 1 1 13 15 3 3 6 0 0 0 - 18081 - 0 0 - - 0
3 ingest 2 ingest2 127.0.0.1 2 4 1 1 15 1 0 0 14 0 0 0 - 18083 - 0 0 - - 0
3 ingest 3 ingest3 127.0.0.1 2 12 1 1 15 1 0 0 14 0 0 0 - 18084 - 0 0 - - 0
3 ingest 4 ingest4 127.0.0.1 0 5 1 1 15 1 0 0 14 0 0 0 - 8081 - 0 0 - - 0

"""

SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
9993            master          1 [failed: 0]   0d00h00m12s     2.6.12-1+deb12u4
# workers
10453           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
9996            worker          1               0d00h00m12s     2.6.12-1+deb12u4
# programs

"""


class Canned(MasterCli):
    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__("/nonexistent")
        self.answers = answers
        self.sent: list[str] = []

    def command(self, cmd: str) -> str:
        self.sent.append(cmd)
        return self.answers[cmd]


def test_servers_state_reads_admin_bits() -> None:
    states = Canned({"show servers state ingest": SERVERS_STATE}).servers_state("ingest")
    by = {s.name: s for s in states}
    assert [s.name for s in states] == ["ingest1", "ingest2", "ingest3", "ingest4"]
    assert by["ingest1"].up and not by["ingest1"].in_maint
    # 0x04 alone is the "disabled" keyword remembered after `state ready`: in rotation.
    assert by["ingest2"].up and by["ingest2"].port == 18083
    assert by["ingest3"].draining and not by["ingest3"].in_maint
    assert by["ingest4"].in_maint and not by["ingest4"].up


def test_show_proc_separates_current_and_old_workers() -> None:
    cli = Canned({"show proc": SHOW_PROC})
    assert cli.master_pid() == 9993
    assert cli.worker_pids() == [10453]
    assert [p.role for p in cli.procs()] == ["master", "worker", "old"]


def test_refused_commands_raise() -> None:
    from lb.runtime import RuntimeApiError

    api = Canned({"set server ingest/nope state ready": "No such server.\n\n"})
    with pytest.raises(RuntimeApiError, match="No such server"):
        api.set_server_state("ingest", "nope", "ready")
    with pytest.raises(ValueError):
        RuntimeApi("/x").set_server_state("ingest", "ingest1", "up")
