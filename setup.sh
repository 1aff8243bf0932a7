#!/usr/bin/env bash
# Installs what building THEMIS needs on Debian/Ubuntu, and nothing that is
# already there: a C/C++ toolchain, clang/libclang (bindgen for RocksDB),
# make, curl, and a Rust toolchain (rustup) when cargo is missing.
# `./setup.sh test` also installs what the test suite uses: promtool
# (Debian's prometheus package) to check /metrics and the shipped rules,
# and the openssl command line (the TLS tests make their certificates with
# it and talk to the server with `openssl s_client`).
# Safe to run any number of times.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
pkgs=(build-essential clang libclang-dev pkg-config make curl ca-certificates)
if [ "${1:-}" = "test" ]; then
  command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
  pkgs+=(openssl)
fi
for pkg in "${pkgs[@]}"; do
  have_pkg "$pkg" || need+=("$pkg")
done

if [ "${#need[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: please install: ${need[*]} (no apt-get on this system)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "setup.sh: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup.sh: cargo is in ~/.cargo/bin; add it to PATH (source ~/.cargo/env)" >&2
    exit 1
  fi
  echo "setup.sh: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
  echo "setup.sh: run 'source ~/.cargo/env' (or open a new shell), then run make again" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 && rustup component add "$comp"
  fi
done
exit 0
