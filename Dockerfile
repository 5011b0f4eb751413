# One image for every esi service: `esi run onec|dms|crm|fake-creatio|fake-dms` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first, in a layer of their own: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY esi ./esi
RUN pip install --no-deps . \
    && rm -rf build esi.egg-info

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
