# syntax=docker/dockerfile:1
# The taskbroker image: build with the Rust toolchain, run on distroless.
#   docker build -t taskbroker .
#   docker run -p 50051:50051 -v taskbroker-data:/var/lib/taskbroker taskbroker
# tests/container.rs runs the built binary with this file's CMD, ENV, USER and
# VOLUME (parsed from here), so keep those instructions one per line.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is
# copied out of the cached target/ before the mount goes away.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin taskbroker \
    && install -D -m 0755 target/release/taskbroker /out/usr/local/bin/taskbroker \
    && install -d -m 0750 /out/var/lib/taskbroker

# glibc, libgcc and CA certificates (rediss://), no shell; the same Debian 12
# the binary was built on.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/taskbroker /usr/local/bin/taskbroker
# Owned by the runtime user so a fresh named volume is writable.
COPY --from=build --chown=65532:65532 /out/var/lib/taskbroker /var/lib/taskbroker
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENV TASKBROKER_DATA_DIR=/var/lib/taskbroker
VOLUME ["/var/lib/taskbroker"]
# gRPC (API, health and the KEDA scaler), then the port reserved for the
# plaintext health listener used with TLS (not opened yet), and the admin
# HTTP port (dashboard, /metrics, /healthz, /readyz). The admin port listens on 127.0.0.1:9090
# by default, reachable with `kubectl port-forward`; publish it with
# TASKBROKER_ADMIN_LISTEN=0.0.0.0:9090 only behind access control.
EXPOSE 50051 50052 9090
ENTRYPOINT ["taskbroker"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
