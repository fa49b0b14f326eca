# gaud-engine: a small image (python slim, wheels built in a first stage, no compiler in the
# result), run as a non-root user. Settings are GAUD_* environment variables (README, Deployment).
#   docker build -t gaud-engine .
#   docker run -p 8400:8400 -e OPENAI_API_KEY=... gaud-engine

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md routes.yaml ./
COPY engine engine
COPY providers.d providers.d
COPY pricing.d pricing.d
COPY models.d models.d
COPY ingress.d ingress.d
COPY schemas schemas
# The gateway and every dependency as wheels; postgres and redis for the several-instance set-up.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres,redis]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gaud --create-home --shell /usr/sbin/nologin gaud
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "gaud-engine[postgres,redis]" && rm -rf /wheels
# Inside a container the gateway listens on every interface (the embedded default is 127.0.0.1).
# A lone container keeps its SQLite database and its key secret in the gaud user's volume.
ENV GAUD_SERVER_HOST=0.0.0.0 \
    GAUD_SERVER_PORT=8400 \
    GAUD_DATABASE_URL=sqlite:////var/lib/gaud/gaud.db \
    PYTHONUNBUFFERED=1
USER gaud
WORKDIR /var/lib/gaud
VOLUME /var/lib/gaud
EXPOSE 8400
# slim has no curl: the standard library asks /health.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GAUD_SERVER_PORT', '8400') + '/health', timeout=4)"]
# SIGTERM lets requests in flight finish (server.shutdown_timeout) and flushes the audit log.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gaud-engine"]
CMD ["serve"]
