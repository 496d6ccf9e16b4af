# Redis 7 from Debian's packages on the local base image: for CI machines with no registry.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The CI image takes whatever Redis 7 Debian stable carries; nothing to pin against. Its
# user is uid/gid 999, as in the official image, so the Kubernetes dev overlay's
# runAsUser/fsGroup fit both.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
USER redis:redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--appendonly", "yes", "--dir", "/data"]
