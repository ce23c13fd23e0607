# syntax=docker/dockerfile:1
#
# pushworker for Cloud Run: `docker build -t pushworker .`
#
# Three build stages keep the dependency build in its own layer (cargo-chef):
# editing src/ rebuilds only the crate itself, not its ~250 dependencies.
# The builder is Debian bookworm, like the runtime (distroless cc-debian12),
# so the binary needs no newer glibc than the runtime has: do not switch it to
# the default (trixie) rust images. scripts/check-runtime-image.sh checks a
# binary against what the runtime provides.

# The toolchain the project is built and tested with (Cargo.toml's
# rust-version is the minimum).
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.78

FROM lukemathwalker/cargo-chef:${CARGO_CHEF_VERSION}-rust-${RUST_VERSION}-bookworm AS chef
WORKDIR /app

# The recipe: the manifests and lockfile, nothing that changes with the code.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: cached until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin pushworker
COPY . .
RUN cargo build --release --locked --bin pushworker

# glibc, libgcc and CA certificates, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /app/target/release/pushworker /pushworker
USER 65532:65532
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/pushworker", "serve"]
