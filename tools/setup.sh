#!/usr/bin/env bash
# tools/setup.sh: installs what ds needs to build and test on Debian 12 (run as root).
# Idempotent and non-interactive: apt runs only when a package is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgtest-dev libgmock-dev
  libcli11-dev libtoml11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  clang libclang-rt-14-dev
  libcaf-dev libssl-dev openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
