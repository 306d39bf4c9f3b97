#!/usr/bin/env bash
# Before/after: the same halley-load scenario against two revisions of halley, in
# alternating rounds on this machine, medians and the B/A ratio of result fields.
#
#   loadtest/ab.sh <rev-a> <rev-b> <field>[,<field>...] -- <halley-load args...>
#
# Examples:
#   loadtest/ab.sh a8f142f HEAD deliveries_per_s -- fanout --mode longpoll --subscribers 10000 --resources 100 --duration 10s
#   loadtest/ab.sh a8f142f HEAD server_bytes_per_parked_poll -- park --conns 10000 --resources 100 --hold 1s
#
# <field> is a key (or a dotted path) of the JSON "results" object halley-load writes (e.g.
# deliveries_per_s, deliveries_per_server_cpu_s, latency_us.p99_us,
# server_bytes_per_parked_poll); with several, comma-separated, each gets its row. Each revision is built in a git
# worktree under $AB_DIR (default /tmp/halley-ab) with its own target directory; the
# load generator is always the current checkout's. Every server is fresh, stopped after
# its run; everything is bounded by ROUNDS runs of the scenario's own --duration.
#
# SIDE=load turns it around: two revisions of halley-load against the current
# checkout's halley (a change to the measuring tool, measured). A field may be a jq
# expression over the results, e.g. client_cpu_s/.results.deliveries (the load
# generator's CPU-seconds per delivery, connection set-up included).
#
# Environment: ROUNDS [3], THREADS [2] (halley --threads), AB_DIR [/tmp/halley-ab],
# SIDE [server].
set -euo pipefail

[ $# -ge 4 ] && [ "$4" = "--" ] || { sed -n '2,24p' "$0" >&2; exit 2; }
REV_A="$1"; REV_B="$2"; FIELD="$3"; shift 4
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-2}"
AB_DIR="${AB_DIR:-/tmp/halley-ab}"
SIDE="${SIDE:-server}"
case "$SIDE" in server) PKG=halley ;; load) PKG=halley-load ;; *) echo "ab: SIDE is server or load" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=18280
METRICS_PORT=18290
command -v jq >/dev/null || { echo "ab: needs jq (apt-get install -y jq)" >&2; exit 1; }

build() { # rev -> path of its $PKG binary
    local rev="$1" sha dir
    sha="$(git -C "$ROOT" rev-parse --short "$rev")"
    dir="$AB_DIR/$sha"
    if [ ! -d "$dir" ]; then
        git -C "$ROOT" worktree add --detach "$dir" "$sha" >/dev/null 2>&1
    fi
    (cd "$dir" && cargo build --release -q -p "$PKG" >&2)
    echo "$dir/target/release/$PKG"
}

(cd "$ROOT" && cargo build --release -q -p halley-load -p halley)
LOAD="$ROOT/target/release/halley-load"
SERVER="$ROOT/target/release/halley"
BIN_A="$(build "$REV_A")"
BIN_B="$(build "$REV_B")"

SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

field() { # json-file field -> the value, or null
    jq -r ".results.$2 // \"null\"" "$1" 2>/dev/null || echo null
}

run() { # binary label round halley-load-args... -> prints the first field
    local bin="$1" label="$2" round="$3" out="$AB_DIR/$2-$3.json" ready server="$1" load="$LOAD"
    shift 3
    [ "$SIDE" = load ] && { server="$SERVER"; load="$bin"; }
    rm -f "$out"
    "$server" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" --threads "$THREADS" \
        --log-level warn > "$AB_DIR/$label-$round.stdout" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        ready="$(grep -c 'listening on' "$AB_DIR/$label-$round.stdout" || true)"
        [ "$ready" -ge 1 ] && break
        sleep 0.05
    done
    timeout 600 "$load" "$@" --addr "127.0.0.1:$PORT" --metrics "http://127.0.0.1:$METRICS_PORT/metrics" \
        --server-pid "$SERVER_PID" --json "$out" > "$AB_DIR/$label-$round.log" 2>&1 || true
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    field "$out" "${FIELD%%,*}"
}

declare -a A B
for r in $(seq "$ROUNDS"); do
    # Alternate the order every round, so drift on a shared machine cancels.
    if [ $((r % 2)) -eq 1 ]; then
        A+=("$(run "$BIN_A" a "$r" "$@")"); B+=("$(run "$BIN_B" b "$r" "$@")")
    else
        B+=("$(run "$BIN_B" b "$r" "$@")"); A+=("$(run "$BIN_A" a "$r" "$@")")
    fi
    echo "ab: round $r: A=${A[-1]} B=${B[-1]}" >&2
done

median() { printf '%s\n' "$@" | grep -v null | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "null"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
echo "rounds: $ROUNDS   A: $REV_A   B: $REV_B   scenario: $*"
IFS=',' read -ra FIELDS <<< "$FIELD"
for f in "${FIELDS[@]}"; do
    VA=(); VB=()
    for r in $(seq "$ROUNDS"); do
        VA+=("$(field "$AB_DIR/a-$r.json" "$f")"); VB+=("$(field "$AB_DIR/b-$r.json" "$f")")
    done
    MA="$(median "${VA[@]}")"; MB="$(median "${VB[@]}")"
    echo "$f"
    echo "  A: ${VA[*]}  median $MA"
    echo "  B: ${VB[*]}  median $MB"
    awk -v a="$MA" -v b="$MB" 'BEGIN { if (a+0 != 0) printf "  B/A: %.2f\n", b / a }'
done
