#!/usr/bin/env bash
# deploy/package.sh — Debian packages of nodemaint: nodemaint-coordinator and nodemaint-agent.
#
#   deploy/package.sh [OUT_DIR]      (default target/debian)
#
# Builds both binaries with the `dist` profile (fat LTO, one codegen unit; see Cargo.toml),
# generates the man pages and shell completions with the binaries themselves
# (`coordinator man`, `coordinator completions`, `node-agent --man-page`) into
# target/deb-assets/, and packs each with cargo-deb (installed with
# `cargo install cargo-deb --locked` when missing). What each package holds:
#   nodemaint-coordinator  /usr/bin/{coordinator,nats-auth}, /etc/nodemaint/coordinator.toml
#                          (conffile, root:nodemaint 0640), the unit nodemaint-coordinator.service
#                          (not enabled: configure credentials first), the system user nodemaint,
#                          man pages, bash/zsh/fish completions, /usr/share/nodemaint/{nats,systemd}
#                          (gen-auth, gen-tls, gen-routes, NATS configs, nats-server.service)
#   nodemaint-agent        /usr/bin/node-agent, /etc/nodemaint/agent.toml (conffile, 0600),
#                          nodemaint-agent.service (not enabled), node-agent(1)
# Then: apt install ./target/debian/nodemaint-*.deb; edit /etc/nodemaint/*.toml; put the
# NATS credentials in place (docs/security.md); systemctl enable --now nodemaint-...
set -euo pipefail
die() { echo "package: error: $*" >&2; exit 1; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$REPO/target/debian}
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET == /* ]] || TARGET=$REPO/$TARGET

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package: installing cargo-deb (once)" >&2
  cargo install cargo-deb --locked || die "cannot install cargo-deb"
fi
cargo build --profile dist -p nodemaint-coordinator --bin coordinator --bin nats-auth
cargo build --profile dist -p nodemaint-agent --bin node-agent
bin=$TARGET/dist

# cargo-deb reads these paths relative to each package (../target/deb-assets), whatever
# CARGO_TARGET_DIR is.
assets=$REPO/target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/man-agent" "$assets/completions"
"$bin/coordinator" man --out "$assets/man" >/dev/null
"$bin/node-agent" --man-page >"$assets/man-agent/node-agent.1"
"$bin/coordinator" completions bash >"$assets/completions/coordinator.bash"
"$bin/coordinator" completions zsh >"$assets/completions/_coordinator"
"$bin/coordinator" completions fish >"$assets/completions/coordinator.fish"
gzip -9n "$assets"/man/*.1 "$assets"/man-agent/*.1

mkdir -p "$OUT"
for p in nodemaint-coordinator nodemaint-agent; do
  cargo deb -p "$p" --no-build --profile dist --output "$OUT" >/dev/null || die "cargo deb -p $p failed"
done
ls -1 "$OUT"/*.deb
