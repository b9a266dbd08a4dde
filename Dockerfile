# syntax=docker/dockerfile:1
# Build:  docker build -t stampede .
# Run:    docker compose up --build   (Redis, Postgres, engine, Prometheus, Grafana)

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# migrations/ and lua/ are embedded into the binary at compile time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --bin stampede \
    && cp target/release/stampede /usr/local/bin/stampede

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin stampede
COPY --from=builder /usr/local/bin/stampede /usr/local/bin/stampede
USER stampede
# MIMALLOC_ALLOW_THP=0: no transparent huge pages for the engine even on a
# host set to `always` (docs/operations.md, Configuration).
ENV STAMPEDE_LISTEN=0.0.0.0:8080 \
    RUST_LOG=info \
    MIMALLOC_ALLOW_THP=0
EXPOSE 8080
CMD ["stampede", "serve"]
