# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target serve -t flowerbot:serve .   the bot on ONNX Runtime, no PyTorch
#   docker build --target train -t flowerbot:train .   training and export, PyTorch with CUDA
#
# Each target installs its dependencies into /opt/venv in a build stage first, from
# pyproject.toml alone, so that changing the source does not reinstall them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN groupadd --system --gid 10001 flowerbot \
    && useradd --system --uid 10001 --gid flowerbot --home-dir /app --no-create-home --shell /usr/sbin/nologin flowerbot \
    && mkdir -p /data /models \
    && chown flowerbot:flowerbot /data /models


# Dependencies of the serving image: the core plus ONNX Runtime, without torch.
FROM base AS serve-build
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# With no package directories yet, this installs only the dependencies. Their versions
# are the ranges in pyproject.toml because the project keeps no lock file (hence DL3013).
# hadolint ignore=DL3013
RUN pip install ".[onnx]" && pip uninstall --yes flowerbot
COPY classifier/ classifier/
COPY storage/ storage/
COPY migrations/ migrations/
COPY bot/ bot/
COPY training/ training/
# The project itself, from this context; its dependencies are already in place.
RUN pip install --no-deps . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"


FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
ENV BACKEND=onnx \
    DEVICE=cpu \
    DATA_DIR=/data \
    MODEL_PATH=/models/current \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
USER 10001:10001
VOLUME ["/data", "/models"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "bot"]


# Dependencies of the training image: PyTorch, torchvision, ONNX export and SciPy.
FROM base AS train-build
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN pip install ".[train]" && pip uninstall --yes flowerbot
COPY classifier/ classifier/
COPY storage/ storage/
COPY migrations/ migrations/
COPY bot/ bot/
COPY training/ training/
RUN pip install --no-deps .


FROM base AS train
COPY --from=train-build /opt/venv /opt/venv
ENV DATA_DIR=/data
USER 10001:10001
VOLUME ["/data", "/models"]
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]
