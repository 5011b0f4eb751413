# One image for every esi service: `esi run onec|dms|crm|fake-creatio|fake-dms` (see docker-compose.yml).
# Secrets: `-e NAME=...`, or `NAME_FILE=/path` or Docker's secrets in /run/secrets/NAME (docs/configuration.md).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first, in a layer of their own, rebuilt only when the lock changes: the exact versions of
# requirements.lock (compiled from pyproject.toml by pip-compile, docs/install.md), every file checked against its
# hash; then esi itself without resolving anything again.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md LICENSE ./
COPY esi ./esi
RUN pip install --no-deps . \
    && rm -rf build esi.egg-info esi_bus.egg-info

# In a container esi listens on every interface (the API and the adapters' /livez, /readyz, /metrics); outside one
# the default stays loopback (esi/config.py)
ENV ESI_HTTP_HOST=0.0.0.0 \
    ESI_HEALTH_HOST=0.0.0.0

# A numeric non-root user, so that orchestrators enforcing runAsNonRoot can check it; ./var for a SQLite fallback.
RUN groupadd --system --gid 10001 esi \
    && useradd --system --uid 10001 --gid esi --home-dir /app --no-create-home --shell /usr/sbin/nologin esi \
    && mkdir -p /app/var \
    && chown esi:esi /app/var
USER 10001:10001

# Liveness over HTTP with the standard library (the slim base has no curl). Each service says where its /livez is:
# onec on ESI_HTTP_PORT (5000), dms and crm on ESI_HEALTH_PORT (8080), the fakes on their own ports.
ENV ESI_HEALTH_URL=http://127.0.0.1:8080/livez
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('ESI_HEALTH_URL', 'http://127.0.0.1:8080/livez'), timeout=4)"]

EXPOSE 5000 5100 5200 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["esi"]
CMD ["run"]
