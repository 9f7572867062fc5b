#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, end-to-end tests with
# real cudele-mds processes, real FUSE mounts and a real S3 server. Reports every failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

export CUDELE_PROPTEST_CASES="${CUDELE_PROPTEST_CASES:-25000}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
