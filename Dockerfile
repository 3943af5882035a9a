# Small image for a 512 MB Lightsail nano: one Python process, no build tools at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LOG_FORMAT=json
WORKDIR /app

COPY pyproject.toml README.md ./
COPY streaming_service ./streaming_service
COPY supabase ./supabase
RUN pip install . && useradd --create-home --uid 10001 streamer && mkdir -p /app/data && chown streamer /app/data

USER streamer
VOLUME ["/app/data"]
ENTRYPOINT ["streaming-service"]
CMD ["run"]
