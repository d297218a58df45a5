# syntax=docker/dockerfile:1
#
# The production image of batch-launcher: one release binary on Debian slim, run as uid 10001.
#
#   DOCKER_BUILDKIT=1 docker build -t batch-launcher:0.1.0 .
#   docker run --rm batch-launcher:0.1.0 list
#   docker run --rm -e BATCH__DATABASE__URL_FILE=/run/secrets/db_url \
#       -v "$PWD/db_url:/run/secrets/db_url:ro" batch-launcher:0.1.0 migrate
#
# Kubernetes manifests that use it: deploy/kubernetes/ (its README.md). Checked offline by
# scripts/check_deploy.sh (hadolint); nothing here is built by the tests.

# --- build ------------------------------------------------------------------------------------
# rustc 1.95 is the workspace's toolchain (Cargo.toml's rust-version is the minimum). The builder
# and the runtime are the same Debian release (bookworm), so the binary's glibc matches.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target/ are BuildKit cache mounts: a rebuild after a code change recompiles
# the workspace's crates only. target/ is a cache, not a layer, so the binary is copied out in
# the same step. `--locked`: exactly the versions of Cargo.lock. The production build registers
# the production domains only (no Cargo features).
RUN --mount=type=cache,id=batch-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=batch-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=batch-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p batch-launcher --bin batch-launcher \
 && install -D -m 0755 target/release/batch-launcher /out/batch-launcher

# --- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: the system trust store that TLS to PostgreSQL, Redis, the asset API and Slack
# verifies against when no CA file is given (rustls-native-certs reads /etc/ssl/certs).
# No tzdata: time zones come from chrono-tz, compiled into the binary.
# The package is left unpinned on purpose: bookworm's security updates of the CA bundle should
# reach a rebuilt image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 batch \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/batch \
        --shell /usr/sbin/nologin batch \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/batch

COPY --from=builder /out/batch-launcher /usr/local/bin/batch-launcher

LABEL org.opencontainers.image.title="batch-launcher" \
      org.opencontainers.image.description="Scheduled batch jobs (pointBalanceSyncJob, assetRefreshJob) with Spring Batch semantics" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# Numeric, so Kubernetes' runAsNonRoot can verify it without the image's /etc/passwd.
USER 10001:10001
# The embedded default database (sqlite://data/batch.db) lands in /var/lib/batch/data: mount a
# volume there for a one-container set-up. Several pods need PostgreSQL or MySQL/MariaDB.
WORKDIR /var/lib/batch
# SIGTERM stops a run after its current chunk (STOPPED, restartable); a second signal exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batch-launcher"]
CMD ["--help"]
