#!/usr/bin/env bash
# Install what building and testing cudele needs on Debian: the C libraries the Rust crates
# link (RocksDB, clang for bindgen), protoc, FUSE 3, fonts for plots, and moto_server (a
# real S3 server on 127.0.0.1 for the S3 tests). Idempotent.
set -euo pipefail

packages=(librocksdb-dev libclang-dev protobuf-compiler fuse3 pkg-config libfontconfig1-dev libfreetype-dev psmisc)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet 'moto[server]'
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
# allow_other mounts need this line for non-root users; harmless for root.
if [ -w /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
  echo user_allow_other >> /etc/fuse.conf
fi
