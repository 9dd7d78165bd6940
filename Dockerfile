# syntax=docker/dockerfile:1
# Base images, pinned by digest (the multi-platform index: amd64, arm64, armv7, 386, ppc64le).
# Tag and digest as published by Docker's official-images pipeline in
# github.com/docker-library/repo-info (repos/rust/remote/1.98.0-bookworm.md, the build of
# 2026-08-25 on bookworm 2026-08-24; repos/debian/remote/bookworm-20260918-slim.md). No registry is
# reachable from this repository's build machines, so re-resolve before you bump them:
#   docker buildx imagetools inspect rust:1.98.0-bookworm      (the "Digest:" line)
# and override either without editing this file:
#   docker build --build-arg RUST_IMAGE=rust:1.98.0-bookworm@sha256:... \
#                --build-arg RUNTIME_IMAGE=debian:bookworm-slim@sha256:... -t orion-proxy .
ARG RUST_IMAGE=rust:1.98.0-bookworm@sha256:82150a52ec202c1b14d7817e14516c392bb7f5cfebd88f1ed531cb37ebd39922
ARG RUNTIME_IMAGE=debian:bookworm-20260918-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

# Build stage: Rust with cmake (Pingora needs it). The dist profile: release, symbols stripped.
FROM ${RUST_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY vendor ./vendor
COPY assets ./assets
COPY conf ./conf
COPY schemas ./schemas
RUN cargo build --profile dist --locked --bin orion-proxy

# Final stage: the binary, conf/ (its container config as the config) and schemas/, non-root.
FROM ${RUNTIME_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin orion \
    && install -d -o 10001 -g 10001 -m 0750 /var/log/orion-proxy
COPY --from=build /src/target/dist/orion-proxy /usr/local/bin/orion-proxy
COPY conf /etc/orion-proxy/
COPY conf/container.yaml /etc/orion-proxy/orion-proxy.yaml
COPY schemas /etc/orion-proxy/schemas
WORKDIR /etc/orion-proxy
USER 10001:10001
# The audit trail (logging.audit.path): keep it on a volume.
VOLUME ["/var/log/orion-proxy"]
# Proxy, metrics, admin (conf/container.yaml).
EXPOSE 8080 9090 9091
# GET /health on the configured proxy listener; exit 0 or 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/orion-proxy", "health", "-c", "/etc/orion-proxy/orion-proxy.yaml"]
ENTRYPOINT ["/usr/local/bin/orion-proxy"]
CMD ["run", "-c", "/etc/orion-proxy/orion-proxy.yaml"]
