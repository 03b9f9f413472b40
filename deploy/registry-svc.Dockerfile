# syntax=docker/dockerfile:1
# Capstan registry-svc. Build from the repository root:
#   docker build -f deploy/registry-svc.Dockerfile -t capstan/registry-svc:0.1.0 .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep crates and compiled dependencies between builds. The binary is copied
# out because a cache mount is not part of any layer. Code generation needs no protoc.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p registry-svc \
 && install -D -m 0555 target/release/registry-svc /out/registry-svc \
 && install -d -m 0750 /out/data

# glibc, libgcc and CA certificates, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="registry-svc" \
      org.opencontainers.image.description="Capstan registry-svc (gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/registry-svc /usr/local/bin/registry-svc
# A writable data dir for `docker run`; on Kubernetes a volume is mounted over it.
COPY --from=build --chown=65532:65532 /out/data /var/lib/capstan
ENV CAPSTAN_LISTEN=0.0.0.0:50051 \
    CAPSTAN_DATA_DIR=/var/lib/capstan
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/registry-svc"]
