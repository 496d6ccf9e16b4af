# Caddy from Debian's packages on the local base image: for CI machines with no registry.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The CI image takes whatever Caddy Debian stable carries; nothing to pin against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends caddy \
    && rm -rf /var/lib/apt/lists/*
ENV XDG_CONFIG_HOME=/tmp XDG_DATA_HOME=/tmp
USER caddy:caddy
EXPOSE 8080
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
