"""Route 53: a health check per HAProxy node and one weighted A record per node, so DNS
answers only with nodes that pass their check."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from infra.converge.runner import REMOVAL_ORDER, Change, Node, Run


def health_checks(run: Run) -> None:
    run.out.checks = _health_checks(run, run.out.nodes)


def records(run: Run) -> None:
    _records(run, run.out.nodes, run.out.checks)


def _health_checks(run: Run, nodes: dict[str, Node]) -> dict[str, str | None]:
    r53 = run.aws.route53
    dns = run.want.dns
    run.read("Route 53 health checks")
    prefix = run.want.caller_prefix
    live: dict[str, list[dict[str, Any]]] = {}
    for page in r53.get_paginator("list_health_checks").paginate():
        for hc in page["HealthChecks"]:
            ref = hc["CallerReference"]
            if ref.startswith(prefix):
                live.setdefault(ref[len(prefix) :].split(":")[0], []).append(hc)

    out: dict[str, str | None] = {}
    for slot, node in nodes.items():
        have = live.pop(slot, [])
        match = next(
            (
                hc
                for hc in have
                if hc["HealthCheckConfig"].get("IPAddress") == node.ip
                and hc["HealthCheckConfig"].get("Port") == dns.health_port
                and hc["HealthCheckConfig"].get("ResourcePath") == dns.health_path
            ),
            None,
        )
        for hc in have:
            if hc is not match:
                run.later(
                    REMOVAL_ORDER["health-check"],
                    Change("delete", "health-check", f"{slot} {hc['Id']}", "stale"),
                    partial(r53.delete_health_check, HealthCheckId=hc["Id"]),
                )
        if match is not None:
            out[slot] = match["Id"]
            continue
        out[slot] = run.do(
            Change(
                "create",
                "health-check",
                slot,
                f"HTTP {node.ip or '(new node)'}:{dns.health_port}{dns.health_path}",
            ),
            partial(_create_check, run),
            slot=slot,
            node=node,
        )
    for slot, hcs in live.items():
        for hc in hcs:
            run.later(
                REMOVAL_ORDER["health-check"],
                Change("delete", "health-check", f"{slot} {hc['Id']}"),
                partial(r53.delete_health_check, HealthCheckId=hc["Id"]),
            )
    return out


def _create_check(run: Run, slot: str, node: Node) -> str:
    if node.ip is None:
        raise RuntimeError(f"HAProxy node {slot} ({node.instance_id}) has no public IP")
    dns = run.want.dns
    r53 = run.aws.route53
    # The reference carries show and slot: found again even if tagging below is
    # what an interruption cut off. Unique per call, as Route 53 requires.
    ref = f"{run.want.caller_prefix}{slot}:{uuid.uuid4().hex[:12]}"
    hc_id: str = r53.create_health_check(
        CallerReference=ref,
        HealthCheckConfig={
            "IPAddress": node.ip,
            "Port": dns.health_port,
            "Type": "HTTP",
            "ResourcePath": dns.health_path,
            "RequestInterval": 10,
            "FailureThreshold": 2,
        },
    )["HealthCheck"]["Id"]
    r53.change_tags_for_resource(
        ResourceType="healthcheck",
        ResourceId=hc_id,
        AddTags=run.tag_list(
            {**run.want.tags("haproxy"), "Name": f"buzzer-{run.want.show}-{slot}"}
        ),
    )
    return hc_id


def _live_records(run: Run) -> list[dict[str, Any]]:
    run.read("Route 53 records")
    fqdn = run.want.dns.name.rstrip(".") + "."
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StartRecordName": fqdn, "StartRecordType": "A"}
    while True:
        page = run.aws.route53.list_resource_record_sets(
            HostedZoneId=run.want.dns.zone_id, **kwargs
        )
        for rr in page["ResourceRecordSets"]:
            if rr["Name"] != fqdn:
                return out
            if rr["Type"] == "A" and rr.get("SetIdentifier", "").startswith(run.want.record_prefix):
                out.append(rr)
        if not page.get("IsTruncated"):
            return out
        kwargs = {
            "StartRecordName": page["NextRecordName"],
            "StartRecordType": page["NextRecordType"],
        }
        if "NextRecordIdentifier" in page:
            kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]


def _records(run: Run, nodes: dict[str, Node], checks: dict[str, str | None]) -> None:
    dns = run.want.dns
    fqdn = dns.name.rstrip(".") + "."
    live = {rr["SetIdentifier"]: rr for rr in _live_records(run)}
    upserts: list[dict[str, Any]] = []
    for slot, node in nodes.items():
        ident = f"{run.want.record_prefix}{slot}"
        want = {
            "Name": fqdn,
            "Type": "A",
            "SetIdentifier": ident,
            "Weight": dns.weight,
            "TTL": dns.ttl,
            "ResourceRecords": [{"Value": node.ip or "(new node)"}],
            "HealthCheckId": checks.get(slot) or "(new check)",
        }
        have = live.pop(ident, None)
        if have == want:
            continue
        run.do(
            Change(
                "create" if have is None else "update",
                "dns-record",
                f"{fqdn} {ident}",
                f"A {node.ip or '(new node)'} weight {dns.weight}",
            )
        )
        upserts.append({"Action": "UPSERT", "ResourceRecordSet": want})
    if upserts and not run.opts.dry_run:
        run.doing = f"writing {len(upserts)} weighted record(s) for {fqdn}"
        # One batch: Route 53 applies it all or nothing.
        run.aws.route53.change_resource_record_sets(
            HostedZoneId=dns.zone_id, ChangeBatch={"Changes": upserts}
        )
    for ident, rr in live.items():
        run.later(
            REMOVAL_ORDER["dns-record"],
            Change("delete", "dns-record", f"{fqdn} {ident}"),
            partial(
                run.aws.route53.change_resource_record_sets,
                HostedZoneId=dns.zone_id,
                ChangeBatch={"Changes": [{"Action": "DELETE", "ResourceRecordSet": rr}]},
            ),
        )
