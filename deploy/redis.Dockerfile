# Redis 7 from Debian's packages on the local base image: for CI machines with no registry.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The CI image takes whatever Redis 7 Debian stable carries; nothing to pin against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
USER redis:redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--appendonly", "yes", "--dir", "/data"]
