# One image for every role: `gateway` (the default command), `worker`, `migrate`.
#   podman build -t resultcast .    (or: docker build -t resultcast .)
# BASE_IMAGE lets a machine without a registry build from a local Python image.
ARG BASE_IMAGE=python:3.12-slim

# --- build: the package and its dependencies into a venv ------------------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so a code change does not reinstall them; exactly the versions CI tested.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir -p service migrations && touch service/__init__.py \
    && /opt/venv/bin/pip install -c constraints.txt . \
    && /opt/venv/bin/pip uninstall -y resultcast
COPY service ./service
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-deps -c constraints.txt . \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the venv, a non-root user, nothing else ---------------------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 resultcast \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin resultcast
COPY --from=build /opt/venv /opt/venv
# The migrations travel inside the package (service/_migrations); this copy is for reading.
COPY migrations /app/migrations
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Gateways close every WebSocket with 1001 on SIGTERM; workers finish or hand back their jobs.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service", "healthcheck"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]
