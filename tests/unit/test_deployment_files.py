"""The Dockerfile and docker-compose.yml against the facts they rely on (no Docker engine here).

What they copy exists and is everything the wheel packages; every command they run parses with
the `assay` CLI; every ASSAY_ variable they set is a setting the app reads. The monitoring files
they mount (docs/operations) exist and point at the services and ports compose runs.
"""

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.core
import typer.main
import yaml

from main import cli
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTING_NAMES = {f"ASSAY_{name.upper()}" for name in Settings.model_fields}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def assay_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image") == "assay:latest"
    }


def parse_assay_command(argv: list[str]) -> None:
    """Parse argv as the `assay` CLI would, without running it: unknown commands or options fail."""
    assert argv[0] == "assay", argv
    group = typer.main.get_command(cli)
    assert isinstance(group, typer.core.TyperGroup)
    commands = group.commands
    name, *args = argv[1:]
    assert name in commands, f"`assay {name}` is not a command"
    commands[name].make_context(name, list(args))


def copied_sources() -> set[str]:
    sources: set[str] = set()
    for instruction, arguments in dockerfile_instructions():
        if instruction == "COPY":
            *paths, _destination = [a for a in shlex.split(arguments) if not a.startswith("--")]
            sources.update(paths)
    return sources


def test_every_file_the_dockerfile_copies_exists_and_is_not_docker_ignored():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for source in copied_sources():
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert source not in ignored, f"{source} is copied but excluded by .dockerignore"


def test_the_image_holds_every_package_of_the_wheel_and_the_migrations():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = set(wheel["only-include"]) | {"alembic", "alembic.ini", pyproject["project"]["readme"]}
    assert needed <= copied_sources()


def test_the_dockerfile_installs_without_dev_dependencies_from_the_lock_file():
    installs = [a for i, a in dockerfile_instructions() if i == "RUN" and "uv sync" in a]
    assert installs and all("--locked" in a and "--no-dev" in a for a in installs)


def test_the_image_command_is_an_assay_command():
    (command,) = [a for i, a in dockerfile_instructions() if i == "CMD"]
    parse_assay_command(json.loads(command))


def test_the_image_sets_only_settings_the_app_reads():
    env_lines = " ".join(a for i, a in dockerfile_instructions() if i == "ENV")
    names = set(re.findall(r"\b(ASSAY_[A-Z0-9_]+)=", env_lines))
    assert names and names <= SETTING_NAMES


@pytest.mark.parametrize("name", sorted(assay_services()))
def test_each_compose_service_runs_a_command_that_exists(name: str):
    command = assay_services()[name]["command"]
    if command[0] == "celery":
        # Flower is a dependency of the image for this service.
        assert "flower" in command
        import flower  # noqa: F401
    else:
        parse_assay_command(command)


def test_compose_sets_only_settings_the_app_reads():
    for name, service in assay_services().items():
        unknown = {key for key in service["environment"] if key.startswith("ASSAY_")}
        unknown -= SETTING_NAMES
        assert not unknown, f"{name} sets {unknown}, which no setting reads"


def test_compose_settings_are_valid_values():
    # The anchors are expanded by the YAML loader; ${VAR:-default} take their defaults.
    for service in assay_services().values():
        environment = {
            key[len("ASSAY_") :].lower(): with_placeholders(str(value))
            for key, value in service["environment"].items()
            if key.startswith("ASSAY_")
        }
        Settings.model_validate(environment)


def with_placeholders(value: str) -> str:
    """${VAR:-default} -> default; ${VAR:?message} (required) -> a stand-in value."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set-by-operator", value)


def compose_variables() -> set[str]:
    text = (ROOT / "docker-compose.yml").read_text()
    return set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))


def test_compose_has_no_default_credentials():
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = {
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "FLOWER_BASIC_AUTH",
        "GRAFANA_ADMIN_PASSWORD",
    }
    for name in secrets:
        # $$ escapes interpolation: a $${...} is the container shell's, not compose's.
        uses = re.findall(r"(?<!\$)\$\{" + name + r"(:.)?", text)
        assert uses and all(use == ":?" for use in uses), f"{name} must be required (:?)"


def test_compose_publishes_only_the_api():
    published = {name for name, s in compose()["services"].items() if s.get("ports")}
    assert published == {"api"}


def test_compose_pins_every_image():
    for name, service in compose()["services"].items():
        image = service.get("image", "")
        if image != "assay:latest":  # built from this checkout
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def test_every_long_running_service_has_a_health_check():
    for name, service in compose()["services"].items():
        if service.get("restart") != "no":  # one-shot jobs (migrate, bucket init) end
            assert "healthcheck" in service, f"{name} has no health check"


def test_flower_watches_the_broker_the_app_uses_behind_a_login():
    flower = compose()["services"]["flower"]["environment"]
    assert flower["CELERY_BROKER_URL"] == flower["ASSAY_BROKER_URL"]
    assert "FLOWER_BASIC_AUTH" in flower


def test_minio_drops_multipart_uploads_nobody_finished_within_a_day():
    minio = compose()["services"]["minio"]["environment"]
    assert minio["MINIO_API_STALE_UPLOADS_EXPIRY"] == "24h"


def test_env_example_lists_every_variable_compose_reads():
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert compose_variables() <= documented


def test_compose_dependencies_name_services_that_exist():
    services = compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on an unknown service {dependency}"


def test_the_api_health_check_probes_a_route_the_api_serves():
    from api.routes.health import router

    check = " ".join(assay_services()["api"]["healthcheck"]["test"])
    (path,) = re.findall(r"http://localhost:8000(/[a-z]+)", check)
    assert path in {getattr(route, "path", None) for route in router.routes}


# --- monitoring: Prometheus, its alert rules, Grafana (docs/operations) ----------------------

OPERATIONS = ROOT / "docs" / "operations"
REQUIRED_ALERTS = {
    "AssayJobsFailing",
    "AssayQueuedJobTooOld",
    "AssayRunningJobHeartbeatStale",
    "AssayNoWorkerUp",
    "AssayApi5xxRate",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def mounts(service: str) -> dict[str, Path]:
    """{path in the container: file or folder of this checkout} of a service's bind mounts."""
    found = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def in_container(service: str, path: str) -> Path:
    """The checkout's file that a service sees at `path` (through one of its bind mounts)."""
    for target, source in mounts(service).items():
        if path == target or path.startswith(target + "/"):
            return source / path[len(target) :].lstrip("/")
    raise AssertionError(f"{service} mounts nothing at {path}")


def option(command: list[str], name: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE` in a command."""
    for index, arg in enumerate(command):
        if arg == name:
            return command[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} is not set in {command}")


def prometheus_config() -> dict[str, Any]:
    command = " ".join(compose()["services"]["prometheus"]["command"])
    (path,) = re.findall(r"--config\.file=(\S+)", command)
    config: dict[str, Any] = load_yaml(in_container("prometheus", path))
    return config


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}


def static_targets(job: dict[str, Any]) -> list[str]:
    return [target for group in job.get("static_configs", []) for target in group["targets"]]


def test_every_file_compose_mounts_exists():
    for name in compose()["services"]:
        for target, source in mounts(name).items():
            assert source.exists(), f"{name} mounts {source} at {target}; it does not exist"


def test_prometheus_scrapes_the_api_on_the_port_it_listens_on():
    api = compose()["services"]["api"]
    (target,) = static_targets(scrape_jobs()["assay-api"])
    assert target == f"api:{option(api['command'], '--port')}"


def test_prometheus_finds_every_worker_container_by_its_service_name():
    worker = compose()["services"]["worker"]
    port = option(worker["command"], "--metrics-port")
    # Reachable from the Prometheus container, not only from the worker's own loopback.
    assert option(worker["command"], "--metrics-host") == "0.0.0.0"
    parse_assay_command(worker["command"])
    (discovery,) = scrape_jobs()["assay-worker"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"
    assert str(discovery["port"]) == port


def test_prometheus_scrapes_flower_with_its_login():
    flower = compose()["services"]["flower"]
    job = scrape_jobs()["flower"]
    (target,) = static_targets(job)
    assert target == f"flower:{option(flower['command'], '--port')}"
    prometheus = compose()["services"]["prometheus"]
    startup = prometheus["command"][0]
    # The entrypoint writes each credentials file the scrape jobs read, from the variables.
    files = [job["basic_auth"]["username_file"], job["basic_auth"]["password_file"]]
    files.append(scrape_jobs()["assay-api"]["authorization"]["credentials_file"])
    for path in files:
        assert f"> {path}" in startup, f"the prometheus service never writes {path}"
        assert any(path.startswith(folder + "/") for folder in prometheus["tmpfs"])
    assert (
        prometheus["environment"]["FLOWER_BASIC_AUTH"] == flower["environment"]["FLOWER_BASIC_AUTH"]
    )


def test_prometheus_loads_the_alert_rules_of_the_repository():
    (rules,) = prometheus_config()["rule_files"]
    assert in_container("prometheus", rules) == OPERATIONS / "alerts.yml"


def test_the_alert_rules_cover_what_an_operator_needs_and_say_what_to_do():
    rules = [
        rule for group in load_yaml(OPERATIONS / "alerts.yml")["groups"] for rule in group["rules"]
    ]
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule, f"{rule['alert']} fires on a single evaluation"


def test_the_alert_rules_are_valid_for_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(OPERATIONS / "alerts.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def grafana_datasources() -> list[dict[str, Any]]:
    folder = in_container("grafana", "/etc/grafana/provisioning/datasources")
    return [ds for path in folder.glob("*.yml") for ds in load_yaml(path)["datasources"]]


def dashboard_files() -> list[Path]:
    (provider,) = load_yaml(
        in_container("grafana", "/etc/grafana/provisioning/dashboards/assay.yml")
    )["providers"]
    files = sorted(in_container("grafana", provider["options"]["path"]).glob("*.json"))
    assert files, "no dashboard is provisioned"
    return files


def test_grafana_reads_the_prometheus_of_compose():
    (datasource,) = grafana_datasources()
    command = " ".join(compose()["services"]["prometheus"]["command"])
    listen = re.findall(r"--web\.listen-address=\S*:(\d+)", command) or ["9090"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == f"http://prometheus:{listen[0]}"
    assert "prometheus" in compose()["services"]["grafana"]["depends_on"]


def test_grafanas_home_dashboard_is_the_provisioned_one():
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert in_container("grafana", home) in dashboard_files()


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_every_dashboard_panel_queries_the_provisioned_datasource(path: Path):
    (datasource,) = grafana_datasources()
    wanted = {"type": "prometheus", "uid": datasource["uid"]}
    dashboard = json.loads(path.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", wanted) == wanted, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_and_alerts_use_only_metrics_assay_defines():
    defined = "\n".join(
        (ROOT / path).read_text() for path in ("api/metrics.py", "workers/metrics.py")
    )
    text = (OPERATIONS / "alerts.yml").read_text() + "".join(
        path.read_text() for path in dashboard_files()
    )
    for name in set(re.findall(r"\bassay_[a-z_]+", text)):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert f'"{base}"' in defined, f"{name} is not a metric Assay serves"
