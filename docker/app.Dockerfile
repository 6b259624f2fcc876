# The app: billing-host serving spin.toml — every component and the web app.
# Build from the repository root: docker build -f docker/app.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2 wasm32-unknown-unknown
COPY . .
# The build output stays in the image's own target directory.
RUN rm -f target && cargo build --release -p billing-host \
 && cargo install wasm-bindgen-cli --version "$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)" --root /root/.cache/llm-billing/tools \
 && target/release/billing-host build

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/billing-host /usr/local/bin/billing-host
COPY --from=build /src/spin.toml /app/spin.toml
COPY --from=build /src/target/wasm32-wasip2/release/*.wasm /app/target/wasm32-wasip2/release/
COPY --from=build /src/target/web-dist /app/target/web-dist
COPY docker/runtime-config.toml /etc/billing/runtime-config.toml
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --retries=6 CMD curl -fsS http://127.0.0.1:3000/.well-known/spin/health || exit 1
CMD ["billing-host", "up", "-f", "/app/spin.toml", "--runtime-config-file", "/etc/billing/runtime-config.toml", "--listen", "0.0.0.0:3000"]
