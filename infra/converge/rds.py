"""The PostgreSQL tier: one RDS PostgreSQL instance (Multi-AZ unless the run sheet says
otherwise) in a DB subnet group of the private subnets, behind the ``postgres`` security
group. RDS keeps the master password in Secrets Manager (``ManageMasterUserPassword``):
no password passes through the run sheet, this process or user data.

Not made when the run sheet names an existing database (``data.postgres.existing_url_ssm``).
Found by its identifier (``buzzer-<show>-postgres``) and checked for the show's tag. It
is removed with a final snapshot: the show's results live in it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from infra.converge.runner import (
    REMOVAL_ORDER,
    Change,
    Run,
    converge_subnet_group,
    error_code,
    remove_subnet_group,
)
from infra.desired import POSTGRES_PORT, SHOW_TAG, DatabaseSpec, resource_name


def converge(run: Run) -> None:
    spec = run.want.database
    identifier = resource_name(run.want.show, "postgres")
    live = _live_instance(run, identifier)
    if spec is None:
        _remove(run, live)
        return
    converge_subnet_group(
        run,
        run.aws.rds,
        "DB",
        spec.subnet_group,
        "postgres",
        f"buzzer PostgreSQL of show {run.want.show}",
    )
    if live is None:
        _create(run, spec)
    else:
        _update(run, spec, live)


def _live_instance(run: Run, identifier: str) -> dict[str, Any] | None:
    run.read(f"RDS instance {identifier}")
    try:
        db: dict[str, Any] = run.aws.rds.describe_db_instances(DBInstanceIdentifier=identifier)[
            "DBInstances"
        ][0]
    except Exception as exc:
        if error_code(exc) == "DBInstanceNotFound":
            return None
        raise
    if run.tags_of({"Tags": db.get("TagList", [])}).get(SHOW_TAG) != run.want.show:
        raise RuntimeError(
            f"RDS instance {identifier} exists but is not tagged {SHOW_TAG}={run.want.show}:"
            " rename the show or remove that instance"
        )
    return db


def _create(run: Run, spec: DatabaseSpec) -> None:
    detail = (
        f"{spec.instance_class}, {spec.storage_gb} GB gp3, PostgreSQL {spec.engine_version},"
        f" Multi-AZ {'on' if spec.multi_az else 'off'}"
    )
    made = run.do(
        Change("create", "db-instance", spec.identifier, detail),
        partial(_create_and_wait, run),
        DBInstanceIdentifier=spec.identifier,
        DBInstanceClass=spec.instance_class,
        Engine="postgres",
        EngineVersion=spec.engine_version,
        AllocatedStorage=spec.storage_gb,
        StorageType="gp3",
        StorageEncrypted=True,
        MultiAZ=spec.multi_az,
        DBName=spec.db_name,
        MasterUsername=spec.username,
        ManageMasterUserPassword=True,
        DBSubnetGroupName=spec.subnet_group,
        VpcSecurityGroupIds=[run.out.sg_ids["postgres"]],
        PubliclyAccessible=False,
        Port=POSTGRES_PORT,
        BackupRetentionPeriod=7,
        CopyTagsToSnapshot=True,
        Tags=run.tag_list(run.want.tags("postgres")),
    )
    if made is None:
        run.out.endpoints["db_host"] = f"(new db instance {spec.identifier})"
        run.out.endpoints["db_secret"] = f"(secret of {spec.identifier})"
    else:
        _publish(run, made)


def _create_and_wait(run: Run, **kwargs: Any) -> dict[str, Any]:
    rds = run.aws.rds
    rds.create_db_instance(**kwargs)
    run.doing = f"waiting for RDS instance {kwargs['DBInstanceIdentifier']}"
    rds.get_waiter("db_instance_available").wait(
        DBInstanceIdentifier=kwargs["DBInstanceIdentifier"], WaiterConfig=run.waiter_config()
    )
    db: dict[str, Any] = rds.describe_db_instances(
        DBInstanceIdentifier=kwargs["DBInstanceIdentifier"]
    )["DBInstances"][0]
    return db


def _publish(run: Run, db: dict[str, Any]) -> None:
    ep = db.get("Endpoint") or {}
    secret = (db.get("MasterUserSecret") or {}).get("SecretArn")
    if not ep.get("Address") or not secret:
        raise RuntimeError(
            f"RDS instance {db['DBInstanceIdentifier']} has no endpoint or no managed"
            f" password secret yet (status {db.get('DBInstanceStatus')}); re-run when available"
        )
    run.out.endpoints["db_host"] = f"{ep['Address']}:{ep.get('Port') or POSTGRES_PORT}"
    run.out.endpoints["db_secret"] = secret


def _update(run: Run, spec: DatabaseSpec, live: dict[str, Any]) -> None:
    changes: dict[str, Any] = {}
    what: list[str] = []
    if live.get("DBInstanceClass") != spec.instance_class:
        # A class change restarts the database (a failover with Multi-AZ): not on air.
        if run.want.frozen:
            run.do(
                Change(
                    "hold",
                    "db-instance",
                    spec.identifier,
                    f"class {live.get('DBInstanceClass')} kept while the show is on",
                )
            )
        else:
            changes["DBInstanceClass"] = spec.instance_class
            what.append(f"class {live.get('DBInstanceClass')} -> {spec.instance_class}")
    if int(live.get("AllocatedStorage", 0)) < spec.storage_gb:
        # Growing storage is online; RDS can't shrink it, so a smaller figure is ignored.
        changes["AllocatedStorage"] = spec.storage_gb
        what.append(f"storage {live.get('AllocatedStorage')} -> {spec.storage_gb} GB")
    if changes:
        run.do(
            Change("update", "db-instance", spec.identifier, ", ".join(what)),
            run.aws.rds.modify_db_instance,
            DBInstanceIdentifier=spec.identifier,
            ApplyImmediately=True,
            **changes,
        )
    _publish(run, live)


def _remove(run: Run, live: dict[str, Any] | None) -> None:
    rds = run.aws.rds
    if live is not None:
        identifier = live["DBInstanceIdentifier"]
        snapshot = f"{identifier}-final-{datetime.now(UTC):%Y%m%d%H%M%S}"
        run.later(
            REMOVAL_ORDER["db-instance"],
            Change("delete", "db-instance", identifier, f"final snapshot {snapshot}"),
            partial(_delete_and_wait, run, identifier, snapshot),
        )
    remove_subnet_group(run, rds, "DB", resource_name(run.want.show, "postgres"))


def _delete_and_wait(run: Run, identifier: str, snapshot: str) -> None:
    rds = run.aws.rds
    rds.delete_db_instance(
        DBInstanceIdentifier=identifier,
        SkipFinalSnapshot=False,
        FinalDBSnapshotIdentifier=snapshot,
        DeleteAutomatedBackups=False,
    )
    run.doing = f"waiting for RDS instance {identifier} to go"
    rds.get_waiter("db_instance_deleted").wait(
        DBInstanceIdentifier=identifier, WaiterConfig=run.waiter_config()
    )
