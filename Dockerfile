# The container image of points-adjuster, built from the repository root (docs/image-and-compose.md):
#
#   docker build -t points-adjuster .                                 the product (the last stage)
#   docker build -t points-adjuster-devkit --target devkit .          the product plus the dev kit
#
# No engine runs on the project's machines: tests/e2e/test_wheel.py takes the same steps (the
# product's lock with its hashes, then the wheel, in a fresh virtual environment; a non-root
# user, an empty working folder) against a real broker, and tests/deploy/test_dockerfile.py
# holds this file to those steps. RUN --mount needs BuildKit (the default builder since Docker
# Engine 23). hadolint: `make lint`.

# --- builder: the product's wheel, nothing else -------------------------------------------------
FROM python:3.11-slim-trixie AS builder
WORKDIR /src
# What the wheel is made of: the package, its schemas (service/schemas links to schemas/) and
# the project metadata (the README is the long description). The context is an allow-list
# (.dockerignore): no keys, .env, virtual environment or tests can reach this stage.
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY service/ service/
RUN pip wheel --no-deps --no-cache-dir --disable-pip-version-check --wheel-dir /dist .

# --- devkit-builder: the dev kit's wheel, for the devkit target only -----------------------------
FROM builder AS devkit-builder
COPY devkit/pyproject.toml devkit/pyproject.toml
COPY devkit/pa_devkit/ devkit/pa_devkit/
RUN pip wheel --no-deps --no-cache-dir --disable-pip-version-check --wheel-dir /dist-devkit ./devkit

# --- product: the wheel in a virtual environment, run by a non-root user -------------------------
FROM python:3.11-slim-trixie AS product

# The version label follows pyproject.toml (a test compares them); the release pipeline passes
# the repository's address and the commit.
ARG VERSION=0.1.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="points-adjuster" \
      org.opencontainers.image.description="Applies points-adjustment commands from Kafka exactly once through Mastercard's Points Activity Service." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary"

# No .pyc written at run time (pip compiled them at install, as root) and every log line out
# at once; the virtual environment first on PATH.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/points-adjuster/bin:$PATH

# The user the service runs as: fixed numeric ids, so that volumes, Kubernetes'
# runAsUser/fsGroup and file ownership agree; no login shell, home = the working folder.
RUN groupadd --gid 10001 points-adjuster \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin points-adjuster

# The product's dependencies from its lock, requirements/product.lock (docs/dependencies.md),
# then the builder's wheel with nothing more, into a virtual environment owned by root: the
# service cannot change its own code. Every file pip installs is checked against the lock's
# sha256 (--require-hashes) and none is built from source (--only-binary: no compiler here, and
# no build backend fetched past the hashes); the wheel's requirements are not resolved again
# (--no-deps), and pip check fails the build on a lock that no longer satisfies the wheel. The
# lock holds the extras postgres (asyncpg) and redis (redis-py), so that one image serves every
# idempotency store PA_IDEMPOTENCY__DSN can name. Lock and wheel are bind-mounted: no layer
# keeps either.
RUN --mount=type=bind,source=requirements/product.lock,target=/tmp/product.lock \
    --mount=type=bind,from=builder,source=/dist,target=/tmp/wheels \
    python -m venv /opt/points-adjuster \
    && /opt/points-adjuster/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --only-binary=:all: -r /tmp/product.lock \
    && /opt/points-adjuster/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-deps /tmp/wheels/points_adjuster-*.whl \
    && /opt/points-adjuster/bin/pip check

# The working folder: empty and the user's. The SQLite store defaults to var/ under it; var/
# exists so that a volume mounted there starts owned by the user.
RUN install -d -o 10001 -g 10001 -m 0750 /app /app/var
WORKDIR /app
USER 10001:10001

# SIGTERM (Docker's and Kubernetes' stop signal) drains, commits and exits 0 within
# PA_SHUTDOWN_TIMEOUT_S plus up to 12 s. No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["points-adjuster"]
CMD ["run"]

# --- devkit: the product plus the PAS sandbox, key generation and the demo (never production) ----
FROM product AS devkit
LABEL org.opencontainers.image.title="points-adjuster-devkit" \
      org.opencontainers.image.description="points-adjuster with its development kit: the PAS sandbox, development keys, the demo. Not for production."
USER 0:0
# The dev kit's wheel only (--no-deps): its dependencies (the product, aiohttp) are already
# installed from the product's lock; pip check says so. /keys starts a named volume owned by
# the user, for `keys generate --dir /keys`.
RUN --mount=type=bind,from=devkit-builder,source=/dist-devkit,target=/tmp/wheels \
    /opt/points-adjuster/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-deps /tmp/wheels/points_adjuster_devkit-*.whl \
    && /opt/points-adjuster/bin/pip check \
    && install -d -o 10001 -g 10001 -m 0700 /keys
USER 10001:10001
ENTRYPOINT ["points-adjuster-devkit"]
CMD ["--help"]

# --- the default target: a plain `docker build .` gives the product, not the dev kit -------------
FROM product AS runtime
