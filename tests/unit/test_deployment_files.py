"""The Dockerfile and docker-compose.yml against the facts they rely on (no Docker engine here).

What they copy exists and is everything the wheel packages; every command they run parses with
the `assay` CLI; every ASSAY_ variable they set is a setting the app reads.
"""

import json
import re
import shlex
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
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))


def test_compose_has_no_default_credentials():
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH"}
    for name in secrets:
        uses = re.findall(r"\$\{" + name + r"(:.)?", text)
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
