# The streamer for a 512 MB box: one Python process, no pandas, no compilers, no secrets.
# Build where deploy.sh runs (never on the box):
#   docker build --build-arg CALENDAR_START=$(date -u +%F) -t schwab-supabase-streamer:latest .
# Stages: deps (the locked dependencies) -> calendar (the NYSE schedule, computed with pandas here
# and only here) -> app (this project's wheel) -> the image, which copies the results of each.
# Every pip install checks the hashes of a committed lock (scripts/lock writes them) and takes
# wheels only. A source change rebuilds only the last layers; the dependency layer stays cached.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

FROM base AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# The base image's pip installs into the venv (--python): the venv itself carries no pip.
ENV PIP_INSTALL="python -m pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all:"

FROM builder AS deps
COPY requirements.lock /tmp/
RUN python -m venv --without-pip /opt/venv && $PIP_INSTALL -r /tmp/requirements.lock

FROM deps AS calendar
COPY requirements-calendar.lock /tmp/
RUN $PIP_INSTALL -r /tmp/requirements-calendar.lock
COPY streaming_service/__init__.py streaming_service/errors.py streaming_service/indicators.py \
     streaming_service/market_hours.py \
     /src/streaming_service/
# CALENDAR_START (YYYY-MM-DD, default: yesterday at build time) also renews a cached layer:
# pass today's date at every build so a cached calendar never outlives its welcome.
ARG CALENDAR_START=
ARG CALENDAR_DAYS=760
RUN start=${CALENDAR_START:-$(date -u -d yesterday +%F)} \
 && cd /src && /opt/venv/bin/python -m streaming_service.market_hours "$start" "$CALENDAR_DAYS" \
      > /market_hours.json \
 && /opt/venv/bin/python -c "import json; s = json.load(open('/market_hours.json')); \
assert len(s) > 400, len(s); print(len(s), 'NYSE sessions from', '$start', 'for $CALENDAR_DAYS days')"

FROM builder AS app
COPY requirements-build.lock /tmp/
RUN python -m venv --without-pip /opt/build \
 && python -m pip --python /opt/build/bin/python install --require-hashes --only-binary=:all: \
      -r /tmp/requirements-build.lock
COPY pyproject.toml README.md /src/
COPY supabase/migrations /src/supabase/migrations
COPY streaming_service /src/streaming_service
# The wheel, installed alone into an empty venv at the same path: its lib/ is what the image adds.
RUN python -m pip --python /opt/build/bin/python wheel --no-deps --no-build-isolation -w /wheels /src \
 && python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-deps /wheels/*.whl

FROM base
ENV PATH=/opt/venv/bin:$PATH LOG_FORMAT=json
# The user the service runs as when the data directory belongs to root (see entrypoint.sh).
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin streamer \
 && mkdir -p /app/data /usr/local/share/streaming-service
COPY --from=deps /opt/venv /opt/venv
COPY --from=calendar /market_hours.json /usr/local/share/streaming-service/
COPY infrastructure/docker/healthcheck.py /usr/local/share/streaming-service/
COPY infrastructure/docker/entrypoint.sh /usr/local/bin/streaming-service
COPY --from=app /opt/venv/lib /opt/venv/lib
WORKDIR /app
VOLUME ["/app/data"]
# /healthz without curl: a stdlib-only script over a bare socket (python -I -S); see its docstring.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-I", "-S", "/usr/local/share/streaming-service/healthcheck.py"]
# Exec form: signals reach the process (compose adds an init, `init: true`). Starts as root only
# to make /app/data writable, then runs as its owner (entrypoint.sh).
ENTRYPOINT ["streaming-service"]
CMD ["run"]
