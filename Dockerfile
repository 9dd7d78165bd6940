# syntax=docker/dockerfile:1
# Build stage: Rust with cmake (Pingora needs it).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY conf ./conf
COPY schemas ./schemas
RUN cargo build --release --locked --bin orion-proxy

# Final stage: only the binary, conf/ and schemas/, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin orion \
    && install -d -o 10001 -g 10001 -m 0750 /var/log/orion-proxy
COPY --from=build /src/target/release/orion-proxy /usr/local/bin/orion-proxy
COPY conf /etc/orion-proxy/conf
COPY schemas /etc/orion-proxy/schemas
WORKDIR /etc/orion-proxy
USER 10001:10001
# The audit trail (logging.audit.path) and any file access log: keep them on a volume.
VOLUME ["/var/log/orion-proxy"]
EXPOSE 8443 9090 9091
ENTRYPOINT ["/usr/local/bin/orion-proxy"]
CMD ["run", "-c", "/etc/orion-proxy/orion-proxy.yaml"]
