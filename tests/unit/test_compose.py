"""docker-compose.yml, checked without a Docker engine: every service, command,
variable, health check and the HAProxy config it mounts must match the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from buzzer.cli import build_parser
from buzzer.haproxy import compose_config
from services.common.settings import CommonSettings, IngestSettings, PushSettings, TallySettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP = [name for name, svc in SERVICES.items() if svc.get("image") == "buzzer:local"]


def test_the_stack_has_the_shape_of_production() -> None:
    assert {"redis", "postgres", "migrate", "tally", "push", "haproxy"} <= set(SERVICES)
    ingest = [n for n in APP if SERVICES[n]["command"][:2] == ["serve", "ingest"]]
    assert len(ingest) == 2


@pytest.mark.parametrize("name", APP)
def test_app_commands_are_real_subcommands(name: str) -> None:
    args = build_parser().parse_args(SERVICES[name]["command"])
    assert callable(args.func)


def _settings_env_names() -> set[str]:
    names = {"REDIS_URL", "DATABASE_URL"}
    for cls in (CommonSettings, IngestSettings, TallySettings, PushSettings):
        names |= {f"BUZZER_{f.upper()}" for f in cls.model_fields}
    return names


@pytest.mark.parametrize("name", APP)
def test_environment_names_are_settings_and_secrets_come_from_outside(name: str) -> None:
    env = SERVICES[name]["environment"]
    assert set(env) <= _settings_env_names()
    for secret in ("BUZZER_TOKEN_SECRET", "BUZZER_ADMIN_TOKEN"):
        assert re.fullmatch(r"\$\{" + secret + r":\?.+\}", env[secret]), env[secret]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "@postgres:" in env["DATABASE_URL"]


@pytest.mark.parametrize("name", [n for n in SERVICES if n != "migrate"])
def test_long_running_services_have_health_checks(name: str) -> None:
    check = SERVICES[name]["healthcheck"]["test"]
    assert check[0] == "CMD"
    if name in APP:
        port = SERVICES[name]["command"][SERVICES[name]["command"].index("--port") + 1]
        assert f"127.0.0.1:{port}/" in check[-1]


def test_dependencies_wait_for_health_and_migration() -> None:
    for name in APP:
        deps = SERVICES[name]["depends_on"]
        if name == "migrate":
            assert deps["postgres"]["condition"] == "service_healthy"
            continue
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    for dep, cond in SERVICES["haproxy"]["depends_on"].items():
        assert dep in SERVICES and cond["condition"] == "service_healthy"


def test_redis_keeps_acknowledged_votes() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"


# What the image ships, and what only a developer's or load generator's machine gets
# (with the `bench` and `loadtest` extras).
PRODUCT = {"buzzer", "services", "lb", "infra", "tiers"}
NOT_SHIPPED = {"bench", "loadtest", "tests"}
EXTRAS_ONLY = {"locust", "websocket-client", "matplotlib"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(lock: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{lock}: {line!r} is not pinned"
            pins[_name(name)] = version
    return pins


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_image_holds_the_product_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY\s+(\S+)\s+\./(\S+?)/?$", dockerfile, re.M)
    assert {src for src, dst in copied if src == dst} == PRODUCT
    # Every source of every COPY/ADD (the last argument is the destination).
    sources = [
        src
        for args in re.findall(r"^(?:COPY|ADD)\s+(.+)$", dockerfile, re.M)
        for src in args.split()[:-1]
    ]
    assert not {".", "./"} & set(sources), "the whole build context is copied"
    for name in NOT_SHIPPED:
        assert not [s for s in sources if s.strip("./").split("/")[0] == name], name
    assert 'ENTRYPOINT ["buzzer"]' in dockerfile


def test_every_package_is_shipped_or_an_extra() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= PRODUCT | NOT_SHIPPED, packages - PRODUCT - NOT_SHIPPED
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {i.rstrip("*") for i in include} == PRODUCT | NOT_SHIPPED - {"tests"}


def test_the_image_installs_the_runtime_lock_then_the_project_alone() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = re.findall(r"^RUN\s+(.+)$", dockerfile, re.M)
    assert runs[0] == "pip install -r requirements/runtime.lock"
    assert any(
        r.startswith("pip install --no-deps . ") or r == "pip install --no-deps ." for r in runs
    )
    assert not any("pip install" in r and "--no-deps" not in r and "-r " not in r for r in runs)


def test_the_locks_pin_what_pyproject_asks_for() -> None:
    # A dependency added to pyproject.toml without running scripts/lock fails here.
    runtime, dev = _pins("runtime.lock"), _pins("dev.lock")
    project = PYPROJECT["project"]
    assert {_name(r) for r in project["dependencies"]} <= set(runtime)
    extras = project["optional-dependencies"]
    wanted = {_name(r) for name in extras for r in extras[name]} - {"buzzer"}
    assert wanted <= set(dev), wanted - set(dev)
    assert not EXTRAS_ONLY & set(runtime), "the production install holds load-test packages"
    for name, version in runtime.items():
        assert dev.get(name) == version, f"{name}: {version} at runtime, {dev.get(name)} in dev"


def test_haproxy_config_is_current() -> None:
    mount = SERVICES["haproxy"]["volumes"][0].split(":")[0]
    path = ROOT / mount
    assert path.read_text() == compose_config(), "run: python -m buzzer.haproxy compose > " + mount
    ports = {p.split(":")[1] for p in SERVICES["haproxy"]["ports"]}
    text = path.read_text()
    for port in ports:
        assert f":{port}\n" in text
    for name in APP:
        cmd = SERVICES[name]["command"]
        if cmd[:2] == ["serve", "ingest"]:
            assert "server ingest" in text and f" {name}:{cmd[-1]}" in text


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="scripts/setup installs haproxy")
def test_haproxy_accepts_the_compose_config() -> None:
    mount = SERVICES["haproxy"]["volumes"][0].split(":")[0]
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / mount)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
