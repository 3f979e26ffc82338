# relay: self-hosted SMTP relay.
#
#   docker build -t relay .
#   docker run -d --name relay \
#     -v /srv/relay/config.yaml:/etc/relay/config.yaml:ro \
#     -v relay-data:/var/lib/relay \
#     -p 2525:2525 -p 127.0.0.1:8025:8025 \
#     --stop-timeout 45 relay
#
# In the config, listeners and admin must bind 0.0.0.0 (not 127.0.0.1) to be
# reachable through published ports. Relative paths (./data/...) resolve
# against the working directory /var/lib/relay, which is the volume.
# The relay drains for up to ~30 s on SIGTERM: give `docker stop` more than
# its default 10 s (--stop-timeout 45, or stop_grace_period: 45s in compose).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN python -m venv /opt/relay \
    && /opt/relay/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay \
        --no-create-home --shell /usr/sbin/nologin relay \
    && install -d -m 0750 -o relay -g relay /var/lib/relay \
    && install -d -m 0755 /etc/relay
COPY --from=build /opt/relay /opt/relay

USER 10001:10001
WORKDIR /var/lib/relay
VOLUME ["/var/lib/relay"]
# 2525: SMTP submission listener, 8025: admin HTTP (/healthz, /readyz, /metrics, /api).
EXPOSE 2525 8025

# /healthz needs no token. Assumes admin.port is 8025; change it here if not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4)"]

STOPSIGNAL SIGTERM
CMD ["relay", "serve", "-c", "/etc/relay/config.yaml"]
