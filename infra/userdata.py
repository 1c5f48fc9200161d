"""User data (a cloud-init shell script) that installs and starts one tier on a node.

Secrets are fetched from SSM at boot, never written here: anyone with
``ec2:DescribeInstanceAttribute`` or ``ec2:DescribeLaunchTemplateVersions`` can read
user data.
"""

from __future__ import annotations

import shlex

from infra.runsheet import RunSheet, Tier, port_of
from infra.timeline import CapacityTimeline

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
  aws ssm get-parameter --region {region} --with-decryption --name "{prefix}/$1" \\
    --query Parameter.Value --output text
}}
umask 077
{{
  echo "DATABASE_URL=$(fetch DATABASE_URL)"
  echo "BUZZER_TOKEN_SECRET=$(fetch TOKEN_SECRET)"
  echo "BUZZER_ADMIN_TOKEN=$(fetch ADMIN_TOKEN)"
}} > /etc/buzzer/secrets.env
umask 022
"""

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
systemctl enable --now haproxy buzzer-lb-sync
"""


RUNTIME_SOCKET = "/run/buzzer/haproxy.sock"


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
        "REDIS_URL": sheet.app.redis_url,
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
        render_args = (
            f"--maxconn {timeline.peak.maxconn_per_node} --runtime-socket {RUNTIME_SOCKET}"
            f" --state-file /var/lib/buzzer/haproxy.state"
        )
        sync_args = (
            f"--socket {RUNTIME_SOCKET} --backend ingest --backend push --source {source}"
            f" {ports} --interval 15"
        )
        return out + _HAPROXY.format(show=sheet.show, sync_args=sync_args, render_args=render_args)
    out += _SECRETS.format(region=region, prefix=sheet.ssm_prefix.rstrip("/"))
    return out + _SERVICE.format(tier=tier, processes=processes)
