"""User data (a cloud-init shell script) that installs and starts one tier on a node.

Secrets are fetched from SSM (or, for a database ``infra apply`` made, from the Secrets
Manager secret RDS keeps its password in) at boot, never written here: anyone with
``ec2:DescribeInstanceAttribute`` or ``ec2:DescribeLaunchTemplateVersions`` can read
user data.

The data tier's endpoints exist only once ``apply`` has made it, after the script is
rendered: the script carries the :data:`SLOTS` markers and the launch template step
fills them (:func:`fill`) with what the ElastiCache and RDS steps found.
"""

from __future__ import annotations

import base64
import shlex

from infra.runsheet import RunSheet, Tier, port_of
from infra.timeline import CapacityTimeline
from lb import planner

_PRELUDE = """#!/bin/bash
# buzzer {tier} node of show {show}; rendered by infra/userdata.py
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q python3-venv awscli {extra_packages}
install -d -m 0755 /etc/buzzer /run/buzzer /var/lib/buzzer
python3 -m venv /opt/buzzer
/opt/buzzer/bin/pip install --quiet {package}
cat > /etc/buzzer/node.env <<'EOF'
{env}
EOF
"""

_SECRETS = """fetch() {{
  aws ssm get-parameter --region {region} --with-decryption --name "$1" \\
    --query Parameter.Value --output text
}}
umask 077
{{
  echo "DATABASE_URL=$({database_url})"
  echo "BUZZER_TOKEN_SECRET=$(fetch {token_secret})"
  echo "BUZZER_ADMIN_TOKEN=$(fetch {admin_token})"
}} > /etc/buzzer/secrets.env
umask 022
"""

# The RDS-managed secret is JSON {"username", "password"}; the URL is put together on
# the node, both percent-encoded, so the password goes from Secrets Manager to the
# node's root-only secrets file and nowhere else.
_RDS_URL_PY = """cat > /opt/buzzer/rds_url.py <<'EOF'
import json, sys, urllib.parse

secret = json.load(sys.stdin)
user, password = (urllib.parse.quote(secret[k], safe="") for k in ("username", "password"))
print(f"postgresql://{user}:{password}@{sys.argv[1]}/{sys.argv[2]}?sslmode=require")
EOF
"""
_RDS_URL = (
    "aws secretsmanager get-secret-value --region {region} --secret-id {secret}"
    " --query SecretString --output text | /opt/buzzer/bin/python /opt/buzzer/rds_url.py"
    " {host} {db}"
)

SLOTS = {
    "redis_url": "@BUZZER_REDIS_URL@",
    "db_host": "@BUZZER_DB_HOST@",
    "db_secret": "@BUZZER_DB_SECRET_ARN@",
}
"""Markers for what only exists once apply has made the data tier."""


def fill(script: str, values: dict[str, str]) -> str:
    """The script with every :data:`SLOTS` marker that ``values`` has replaced."""
    for key, marker in SLOTS.items():
        if key in values:
            script = script.replace(marker, values[key])
    return script


def fill_b64(data: str, values: dict[str, str]) -> str:
    """:func:`fill` on base64 user data, as a launch template holds it."""
    script = base64.b64decode(data).decode()
    return base64.b64encode(fill(script, values).encode()).decode()


def redis_url(sheet: RunSheet) -> str:
    if sheet.app.redis_url is not None:
        return sheet.app.redis_url
    return SLOTS["redis_url"]


def cluster_url(host: str, port: int, tls: bool) -> str:
    """The services' convention for a Redis Cluster (services/common/redisconn.py):
    the configuration endpoint as the one seed node."""
    return f"{'rediss' if tls else 'redis'}+cluster://{host}:{port}"


def ack_replicas(sheet: RunSheet) -> int:
    spec = sheet.data.redis
    if spec is None:
        return 0
    if spec.ack_replicas is not None:
        return spec.ack_replicas
    return 1 if spec.replicas_per_shard > 0 else 0


def _database_url(sheet: RunSheet, region: str) -> tuple[str, str]:
    """The shell that prints DATABASE_URL on the node, and any helper it needs."""
    pg = sheet.data.postgres
    prefix = sheet.ssm_prefix.rstrip("/")
    if pg is None:
        return f"fetch {shlex.quote(prefix + '/DATABASE_URL')}", ""
    if pg.existing_url_ssm is not None:
        return f"fetch {shlex.quote(pg.existing_url_ssm)}", ""
    cmd = _RDS_URL.format(
        region=region,
        secret=SLOTS["db_secret"],
        host=SLOTS["db_host"],
        db=shlex.quote(pg.db_name),
    )
    return cmd, _RDS_URL_PY


# Every process of a tier binds the same port with SO_REUSEPORT: lb discovery
# (Ec2TagInventory) knows one port per tier, not per process.
_SERVICE = """cat > /etc/systemd/system/buzzer-{tier}@.service <<'EOF'
[Unit]
Description=buzzer {tier} process %i
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/buzzer/node.env
EnvironmentFile=/etc/buzzer/secrets.env
ExecStart=/opt/buzzer/bin/buzzer serve {tier}
Restart=always
RestartSec=1
LimitNOFILE=1048576
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
for i in $(seq 1 {processes}); do systemctl enable --now "buzzer-{tier}@$i"; done
"""

# What maxconn needs from the kernel and systemd: two descriptors per connection for
# HAProxy (LimitNOFILE, which fs.nr_open caps), twice that machine-wide (a reload's old
# worker keeps its websockets until hard-stop-after while the new one takes new ones),
# and ephemeral ports towards each push server (one per (address, port) it connects to).
_HAPROXY_LIMITS = """cat > /etc/sysctl.d/60-buzzer-haproxy.conf <<'EOF'
# maxconn {maxconn}: HAProxy needs {nofile} descriptors (2 per connection + reserve)
fs.nr_open = {nr_open}
fs.file-max = {file_max}
net.ipv4.ip_local_port_range = 1024 65535
net.core.somaxconn = 65535
EOF
sysctl --quiet --load=/etc/sysctl.d/60-buzzer-haproxy.conf
install -d -m 0755 /etc/systemd/system/haproxy.service.d
cat > /etc/systemd/system/haproxy.service.d/buzzer-limits.conf <<'EOF'
[Service]
LimitNOFILE={nofile}
EOF
"""

_HAPROXY = """cat > /etc/systemd/system/buzzer-lb-sync.service <<'EOF'
[Unit]
Description=buzzer lb sync: web nodes of show {show} from EC2 tags
After=haproxy.service

[Service]
EnvironmentFile=/etc/buzzer/node.env
ExecStart=/opt/buzzer/bin/buzzer lb sync {sync_args}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
echo 1 > /var/lib/buzzer/haproxy.state
/opt/buzzer/bin/buzzer lb apply {render_args} --target /etc/haproxy/haproxy.cfg
systemctl daemon-reload
systemctl enable haproxy buzzer-lb-sync
# A restart, not --now: the package started HAProxy before its limits were raised.
systemctl restart haproxy
systemctl start buzzer-lb-sync
"""


RUNTIME_SOCKET = "/run/buzzer/haproxy.sock"

_NOFILE_FLOOR = 1_048_576
"""systemd's own fs.nr_open: never lowered below it."""


def haproxy_limits(maxconn: int) -> str:
    """The sysctl and systemd settings a node with ``maxconn`` needs."""
    nofile = planner.haproxy_nofile(maxconn)
    nr_open = max(nofile, _NOFILE_FLOOR)
    return _HAPROXY_LIMITS.format(
        maxconn=maxconn, nofile=nofile, nr_open=nr_open, file_max=2 * nr_open + 65_536
    )


def discovery_source(show: str) -> str:
    """The ``buzzer lb sync --source`` that finds this show's web nodes."""
    return f"ec2:buzzer:show={show}"


def render(
    sheet: RunSheet, timeline: CapacityTimeline, tier: Tier, processes: int, region: str
) -> str:
    env = {
        "BUZZER_SHOW": sheet.show,
        "BUZZER_TIER": tier,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "REDIS_URL": redis_url(sheet),
        "BUZZER_ACK_REPLICAS": str(ack_replicas(sheet)),
        "BUZZER_PARTITIONS": str(timeline.peak.partitions),
        "BUZZER_HOST": "0.0.0.0",
        "BUZZER_PORT": str(port_of(sheet, tier)),
    }
    out = _PRELUDE.format(
        tier=tier,
        show=sheet.show,
        extra_packages="haproxy" if tier == "haproxy" else "",
        package=shlex.quote(sheet.app.package),
        env="\n".join(f"{k}={v}" for k, v in env.items()),
    )
    if tier == "haproxy":
        source = shlex.quote(discovery_source(sheet.show))
        ports = f"--port ingest={port_of(sheet, 'ingest')} --port push={port_of(sheet, 'push')}"
        # The config has empty server-template slots; sync fills them from EC2 tags
        # through the runtime API, so membership changes never need a reload.
        maxconn = timeline.peak.maxconn_per_node
        render_args = (
            f"--maxconn {maxconn} --runtime-socket {RUNTIME_SOCKET}"
            f" --state-file /var/lib/buzzer/haproxy.state"
        )
        if sheet.network.monitoring_cidr:
            # Prometheus scrapes the exporter from elsewhere; the security group admits
            # only the monitoring range (desired.py).
            render_args += " --stats-bind 0.0.0.0"
        sync_args = (
            f"--socket {RUNTIME_SOCKET} --backend ingest --backend push --source {source}"
            f" {ports} --interval 15"
        )
        return (
            out
            + haproxy_limits(maxconn)
            + _HAPROXY.format(show=sheet.show, sync_args=sync_args, render_args=render_args)
        )
    database_url, helper = _database_url(sheet, region)
    prefix = sheet.ssm_prefix.rstrip("/")
    out += helper + _SECRETS.format(
        region=region,
        database_url=database_url,
        token_secret=shlex.quote(f"{prefix}/TOKEN_SECRET"),
        admin_token=shlex.quote(f"{prefix}/ADMIN_TOKEN"),
    )
    return out + _SERVICE.format(tier=tier, processes=processes)
