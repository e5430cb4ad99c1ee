# kunpay's worker image: `kunpay-worker run` by default; the same image runs `migrate`,
# `broker-setup`, `sandbox` and the operator commands (docker-compose.yml uses it for all of them).
# tests/unit/test_container.py checks this file against the code.

# -- build: install the package and its worker dependencies into a virtualenv -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/kunpay
WORKDIR /src
# pyproject.toml reads README.md (the package's long description).
COPY pyproject.toml README.md ./
COPY kunpay_sdk ./kunpay_sdk
COPY kunpay_worker ./kunpay_worker
# The worker extra only: no test or lint tools in the image.
RUN /opt/kunpay/bin/pip install ".[worker]"

# -- runtime: the virtualenv on a clean base, run as an unprivileged user ----------------------
FROM python:3.11-slim

ENV PATH=/opt/kunpay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 kunpay \
    && useradd --system --uid 10001 --gid kunpay --home-dir /var/lib/kunpay --create-home \
        --shell /usr/sbin/nologin kunpay

COPY --from=build /opt/kunpay /opt/kunpay

# The default SQLite database (KUNPAY_DATABASE_URL unset) is created in the working directory.
WORKDIR /var/lib/kunpay
# Numeric, so that orchestrators enforcing "run as non-root" can verify it.
USER 10001:10001

# The worker's HTTP server: provider callbacks, /healthz, /readyz, /metrics (KUNPAY_SERVER__PORT).
EXPOSE 8080

# slim has no curl: ask /healthz with the standard library (a non-2xx answer raises, exit 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KUNPAY_SERVER__PORT', '8080'), timeout=4)"]

ENTRYPOINT ["kunpay-worker"]
CMD ["run"]
