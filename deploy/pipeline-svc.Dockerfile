# syntax=docker/dockerfile:1
# Capstan pipeline-svc. Build from the repository root:
#   docker build -f deploy/pipeline-svc.Dockerfile -t capstan/pipeline-svc:0.1.0 .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep crates and compiled dependencies between builds. The binary is copied
# out because a cache mount is not part of any layer. Code generation needs no protoc.
# Without the default `demo` feature: the server carries no registry-svc code (the
# `demo` command, which runs both services in one process, is for laptops).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p pipeline-svc --no-default-features \
 && install -D -m 0555 target/release/pipeline-svc /out/pipeline-svc \
 && install -d -m 0750 /out/data

# glibc, libgcc and CA certificates, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="pipeline-svc" \
      org.opencontainers.image.description="Capstan pipeline-svc (gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/pipeline-svc /usr/local/bin/pipeline-svc
# A writable data dir for `docker run`; on Kubernetes a volume is mounted over it.
COPY --from=build --chown=65532:65532 /out/data /var/lib/capstan
ENV CAPSTAN_LISTEN=0.0.0.0:50052 \
    CAPSTAN_DATA_DIR=/var/lib/capstan
USER 65532:65532
EXPOSE 50052 9090
ENTRYPOINT ["/usr/local/bin/pipeline-svc"]
