#!/usr/bin/env bash
# Starts a two-node x0tta6bl4 mesh on loopback from examples/node-a.toml and node-b.toml:
# creates a mesh CA on node A, invites and joins node B, runs both daemons and shows them open a
# mutually authenticated X25519MLKEM768 link. Stops both daemons after SECONDS (default 10;
# 0 = run until Ctrl-C) and removes the temporary state unless X0T_KEEP=1.
#
#   ./examples/two-node.sh [SECONDS]
set -euo pipefail
seconds=${1:-10}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

echo "==> building x0t" >&2
cargo build -q -p x0t --manifest-path "$root/Cargo.toml"
x0t="${CARGO_TARGET_DIR:-$root/target}/debug/x0t"

work=$(mktemp -d -t x0t-two-node.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${X0T_KEEP:-0}" = 1 ]; then echo "state and logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
cp "$here/node-a.toml" "$here/node-b.toml" "$work/"
cd "$work"

wait_for() { # file pattern
    for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

echo "==> node A: identity and mesh CA (trust domain example.mesh)"
"$x0t" init --state-dir node-a
"$x0t" ca init --trust-domain example.mesh --state-dir node-a
X0T_LOG=info "$x0t" up --config node-a.toml 2>node-a.log & pids+=($!)
wait_for node-a.log "x0t up"

echo "==> node B: join with a one-time invitation from node A"
token=$("$x0t" ca invite --state-dir node-a --ttl 10m)
"$x0t" join "$token" --state-dir node-b
X0T_LOG=info "$x0t" up --config node-b.toml 2>node-b.log & pids+=($!)
wait_for node-b.log "link up"
wait_for node-a.log "link up"

echo "==> the link, as each daemon logged it"
grep -h "link up" node-a.log node-b.log
echo "==> node B's identity"
"$x0t" identity show --state-dir node-b

if [ "$seconds" = 0 ]; then
    echo "==> running; logs in $work/node-{a,b}.log; Ctrl-C to stop"
    wait
else
    sleep "$seconds"
    echo "==> stopping after ${seconds}s"
fi
