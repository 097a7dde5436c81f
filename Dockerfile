# syntax=docker/dockerfile:1
# The chorus image: build the release binary in the Rust image pinned by
# rust-toolchain.toml, run it in distroless (glibc and CA certificates, no
# shell, no package manager) as a non-root user.
#
#   docker build -t chorus .
#   docker run -p 4000:4000 -e CHORUS_TOKEN_SECRET=... chorus
#
# deploy/kubernetes/ runs it as a StatefulSet; README "## Deploying" explains both.
# tests/tests/deploy checks this file against the manifests and the binary.

# The toolchain of rust-toolchain.toml (the test checks they agree).
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p chorus-gateway --bin chorus \
    && install -m 0755 target/release/chorus /chorus

# distroless/cc: what a Rust binary linked against glibc needs, nothing else.
# Its `nonroot` user is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /chorus /usr/local/bin/chorus
USER 65532:65532
# Clients and the HTTP API (TCP), cluster gossip (QUIC over UDP). Listen on every
# interface; for a cluster set CHORUS_GOSSIP to an address peers reach this
# container at (it is also the address the node announces), and CHORUS_SEEDS.
ENV CHORUS_LISTEN=0.0.0.0:4000
EXPOSE 4000/tcp 7400/udp
# No curl in the image: `chorus health` GETs /healthz on CHORUS_LISTEN.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/chorus", "health"]
# SIGTERM drains: clients are closed with 1012 (phoenix.js reconnects to another
# node), then the node leaves the cluster; within 10 s plus the batches' pauses.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chorus"]
