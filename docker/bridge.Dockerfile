# billing-bridge: outbox relay, consumers, live updates. It migrates the
# database at start. Build from the repository root:
#   docker build -f docker/bridge.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rm -f target && cargo build --release -p billing-bridge

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/billing-bridge /usr/local/bin/billing-bridge
EXPOSE 3100
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD curl -fsS http://127.0.0.1:3100/readyz || exit 1
CMD ["billing-bridge", "run"]
