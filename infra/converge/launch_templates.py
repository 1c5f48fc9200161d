"""Launch templates, one per tier; a changed spec becomes a new default version, tagged
with its digest so that instances launched from an older one can be told apart."""

from __future__ import annotations

from functools import partial
from typing import Any

from infra import userdata
from infra.converge.runner import REMOVAL_ORDER, Change, Run
from infra.runsheet import GroupKey


def converge(run: Run) -> None:
    run.out.digests = _templates(run, run.out.sg_ids)


def _templates(run: Run, sg_ids: dict[GroupKey, str]) -> dict[str, str]:
    ec2 = run.aws.ec2
    run.read("launch templates")
    live = {
        t["LaunchTemplateName"]: t
        for page in ec2.get_paginator("describe_launch_templates").paginate(Filters=run.filters())
        for t in page["LaunchTemplates"]
    }
    digests: dict[str, str] = {}
    for spec in run.want.templates:
        data = dict(spec.data)
        # The data tier's endpoints, found or made by the steps before this one; a
        # changed endpoint is a changed spec, so a new template version.
        data["UserData"] = userdata.fill_b64(str(data["UserData"]), run.out.endpoints)
        if spec.tier != "haproxy":
            # HAProxy nodes get their group on the network interface at launch,
            # which can't be combined with template-level groups.
            data["SecurityGroupIds"] = [sg_ids[spec.tier]]
        digest = type(spec)(spec.tier, spec.name, data).digest
        digests[spec.name] = digest
        t = live.pop(spec.name, None)
        if t is None:
            tags = run.tag_list(run.want.tags(spec.tier))
            run.do(
                Change("create", "launch-template", spec.name, f"{data['InstanceType']}"),
                ec2.create_launch_template,
                LaunchTemplateName=spec.name,
                VersionDescription=digest,
                LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
            )
            continue
        run.read(f"launch template {spec.name}")
        current = ec2.describe_launch_template_versions(
            LaunchTemplateId=t["LaunchTemplateId"], Versions=["$Default"]
        )["LaunchTemplateVersions"][0]
        if current.get("VersionDescription") == digest:
            continue

        def new_version(
            t: dict[str, Any] = t, data: dict[str, Any] = data, d: str = digest
        ) -> None:
            v = ec2.create_launch_template_version(
                LaunchTemplateId=t["LaunchTemplateId"],
                VersionDescription=d,
                LaunchTemplateData=data,
            )["LaunchTemplateVersion"]["VersionNumber"]
            ec2.modify_launch_template(
                LaunchTemplateId=t["LaunchTemplateId"], DefaultVersion=str(v)
            )

        run.do(
            Change(
                "update",
                "launch-template",
                spec.name,
                f"new default version (spec {current.get('VersionDescription')} -> {digest});"
                " running instances keep theirs",
            ),
            new_version,
        )
    for name, t in live.items():
        run.later(
            REMOVAL_ORDER["launch-template"],
            Change("delete", "launch-template", name),
            partial(ec2.delete_launch_template, LaunchTemplateId=t["LaunchTemplateId"]),
        )
    return digests
