#!/usr/bin/env bash
# Side-by-side runs of halley and Nchan (nginx + libnginx-mod-nchan) on this machine.
#
#   loadtest/compare.sh                 # defaults: about 10 minutes in total
#   ROUNDS=5 DURATION=20s loadtest/compare.sh
#
# Every (scenario, server, round) runs against a freshly started server, halley and Nchan
# alternating (the order flips every round, to cancel drift on a shared machine). The
# summary table gives medians over the rounds and the halley/Nchan ratio. Server CPU is
# utime+stime from /proc/<pid>/stat of the server process(es) (nginx: master + workers)
# during the measured window. Loopback only; every server started here is stopped on exit.
#
# Environment (defaults in brackets):
#   ROUNDS [3]            rounds per scenario
#   THREADS [nproc]       halley --threads and nginx worker_processes
#   DURATION [8s]         measured window of each fanout run
#   SCENARIOS [park fanout fixed longpoll longpoll_rate portfolio]
#   PARK_CONNS [10000] PARK_RESOURCES [100] PARK_HOLD [3s]
#   FANOUT_SUBS [10000] FANOUT_RESOURCES [100] MSG_SIZE [100]
#   FIXED_DELIVERIES [10000]   deliveries/s of the fixed-rate run (rate = this / (subs/resources))
#   LP_SUBS [10000]
#   LP_PUBLISH [""]      extra publisher flags of the long-poll run (default: one closed-loop publisher)
#   LPR_PUBLISH ["--rate 2000 --batch 50 --publishers 2 --pipeline 8"]   the "longpoll_rate"
#                         scenario: an open-loop feed faster than subscribers re-poll, so each
#                         poll collects several changes (halley: one 206; Nchan: a multipart)
#   PF_CONNS [1000] PF_PER_CONN [10] PF_RESOURCES [100] PF_BATCH [10]
#   LOAD_PROCS [1]        halley-load --procs
#   HALLEY_PORT [18080] HALLEY_METRICS_PORT [18090] NCHAN_PORT [18081]
#   NCHAN_BUFFER [1000]   nchan_message_buffer_length (messages kept per channel)
#   BASELINE [1]          also run the stream scenarios (fanout, fixed) against
#                         `halley-load baseline-server`, the minimal frame-writing server
#                         (Nchan's chunked-stream protocol, nothing else): the ceiling column
#   BASELINE_PORT [18082]
#   RESULTS_DIR [a new temporary folder; kept]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-$(nproc)}"
DURATION="${DURATION:-8s}"
SCENARIOS="${SCENARIOS:-park fanout fixed longpoll longpoll_rate portfolio}"
PARK_CONNS="${PARK_CONNS:-10000}"
PARK_RESOURCES="${PARK_RESOURCES:-100}"
PARK_HOLD="${PARK_HOLD:-3s}"
FANOUT_SUBS="${FANOUT_SUBS:-10000}"
FANOUT_RESOURCES="${FANOUT_RESOURCES:-100}"
MSG_SIZE="${MSG_SIZE:-100}"
FIXED_DELIVERIES="${FIXED_DELIVERIES:-10000}"
LP_SUBS="${LP_SUBS:-10000}"
LP_PUBLISH="${LP_PUBLISH:-}"
LPR_PUBLISH="${LPR_PUBLISH:---rate 2000 --batch 50 --publishers 2 --pipeline 8}"
PF_CONNS="${PF_CONNS:-1000}"
PF_PER_CONN="${PF_PER_CONN:-10}"
PF_RESOURCES="${PF_RESOURCES:-100}"
PF_BATCH="${PF_BATCH:-10}"
LOAD_PROCS="${LOAD_PROCS:-1}"
HALLEY_PORT="${HALLEY_PORT:-18080}"
HALLEY_METRICS_PORT="${HALLEY_METRICS_PORT:-18090}"
NCHAN_PORT="${NCHAN_PORT:-18081}"
NCHAN_BUFFER="${NCHAN_BUFFER:-1000}"
BASELINE="${BASELINE:-1}"
BASELINE_PORT="${BASELINE_PORT:-18082}"
RUN_TIMEOUT=300   # seconds: hard bound on any single load run

log() { echo "compare: $*" >&2; }

# --- prerequisites -----------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need_apt+=(libnginx-mod-nchan)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
[ -e "$NCHAN_MODULE" ] || { log "no $NCHAN_MODULE after install"; exit 1; }

log "building halley and halley-load (release)"
(cd "$ROOT" && cargo build --release -q -p halley -p halley-load)
HALLEY="$ROOT/target/release/halley"
LOAD="$ROOT/target/release/halley-load"

WORK="$(mktemp -d /tmp/halley-compare.XXXXXX)"
RESULTS_DIR="${RESULTS_DIR:-$WORK/results}"
mkdir -p "$RESULTS_DIR"
log "work folder $WORK, results in $RESULTS_DIR"

# --- servers -----------------------------------------------------------------------------
HALLEY_PID=""
NGINX_MASTER=""
BASELINE_PID=""

stop_baseline() {
    if [ -n "$BASELINE_PID" ] && kill -0 "$BASELINE_PID" 2>/dev/null; then
        kill "$BASELINE_PID" 2>/dev/null || true
        wait "$BASELINE_PID" 2>/dev/null || true
    fi
    BASELINE_PID=""
}

stop_halley() {
    if [ -n "$HALLEY_PID" ] && kill -0 "$HALLEY_PID" 2>/dev/null; then
        kill "$HALLEY_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$HALLEY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$HALLEY_PID" 2>/dev/null || true
        wait "$HALLEY_PID" 2>/dev/null || true
    fi
    HALLEY_PID=""
}

stop_nginx() {
    if [ -n "$NGINX_MASTER" ] && kill -0 "$NGINX_MASTER" 2>/dev/null; then
        kill -QUIT "$NGINX_MASTER" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NGINX_MASTER" 2>/dev/null || break; sleep 0.1; done
        # Workers of a master that would not quit.
        for p in $(pgrep -P "$NGINX_MASTER" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        kill -9 "$NGINX_MASTER" 2>/dev/null || true
    fi
    NGINX_MASTER=""
}

cleanup() {
    stop_halley
    stop_nginx
    stop_baseline
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# await_start NAME PID FILE PATTERN ERRFILE: waits (10 s at most) for the server's start
# line PATTERN in FILE while PID lives; otherwise shows ERRFILE and gives up.
await_start() {
    for _ in $(seq 100); do
        grep -q "$4" "$3" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    log "$1 did not start:"; cat "$5" >&2; exit 1
}

start_halley() {
    local out="$WORK/halley.out"
    "$HALLEY" --listen "127.0.0.1:$HALLEY_PORT" --metrics-listen "127.0.0.1:$HALLEY_METRICS_PORT" \
        --threads "$THREADS" --log-level warn >"$out" 2>"$WORK/halley.err" &
    HALLEY_PID=$!
    await_start halley "$HALLEY_PID" "$out" "halley listening on" "$WORK/halley.err"
}

start_baseline() {
    local err="$WORK/baseline.err"
    "$LOAD" baseline-server --listen "127.0.0.1:$BASELINE_PORT" --threads "$THREADS" 2>"$err" &
    BASELINE_PID=$!
    await_start baseline-server "$BASELINE_PID" "$err" "listening on" "$err"
}

start_nginx() {
    local prefix="$WORK/nginx"
    rm -rf "$prefix"; mkdir -p "$prefix"
    sed -e "s#@WORKERS@#$THREADS#; s#@PORT@#$NCHAN_PORT#; s#@PREFIX@#$prefix#g; s#@BUFFER@#$NCHAN_BUFFER#; s#@MODULE@#$NCHAN_MODULE#" \
        "$HERE/nchan/nginx.conf.in" >"$prefix/nginx.conf"
    nginx -e "$prefix/error.log" -c "$prefix/nginx.conf" -p "$prefix" || { cat "$prefix/error.log" >&2; exit 1; }
    for _ in $(seq 100); do
        [ -s "$prefix/nginx.pid" ] && NGINX_MASTER="$(cat "$prefix/nginx.pid")" && break
        sleep 0.1
    done
    [ -n "$NGINX_MASTER" ] || { log "nginx did not start"; cat "$prefix/error.log" >&2; exit 1; }
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$NCHAN_PORT/nchan_stub_status" 2>/dev/null && return 0
        # Without curl: give it a moment.
        command -v curl >/dev/null 2>&1 || { sleep 0.5; return 0; }
        sleep 0.1
    done
    log "nginx does not answer"; exit 1
}

# --server-pid flags for the running server.
pid_flags() {
    case "$1" in
        halley) echo "--server-pid $HALLEY_PID" ;;
        baseline) echo "--server-pid $BASELINE_PID" ;;
        nchan)
            local f="--server-pid $NGINX_MASTER"
            for p in $(pgrep -P "$NGINX_MASTER"); do f="$f --server-pid $p"; done
            echo "$f" ;;
    esac
}

target_flags() {
    case "$1" in
        halley) echo "--target halley --addr 127.0.0.1:$HALLEY_PORT" ;;
        nchan) echo "--target nchan --addr 127.0.0.1:$NCHAN_PORT" ;;
        # The baseline speaks Nchan's chunked-stream protocol.
        baseline) echo "--target nchan --addr 127.0.0.1:$BASELINE_PORT" ;;
    esac
}

metrics_url() {
    case "$1" in
        halley) echo "http://127.0.0.1:$HALLEY_METRICS_PORT/metrics" ;;
        nchan) echo "http://127.0.0.1:$NCHAN_PORT/nchan_stub_status" ;;
    esac
}

# Does this halley build answer POST /batch? (It was being implemented when this was written.)
HALLEY_BATCH=unknown
probe_batch() {
    local body=$'--B\r\nContent-Type: application/http; msgtype=request\r\n\r\nPOST /compare-probe HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nx\n\r\n--B--\r\n'
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: multipart/digest; boundary=B' \
        --data-binary "$body" "http://127.0.0.1:$HALLEY_PORT/batch" || echo 000)
    if [ "$code" = 200 ]; then HALLEY_BATCH=yes; else HALLEY_BATCH=no; fi
    log "halley POST /batch answers $code (batch publishing: $HALLEY_BATCH)"
}

# --- scenarios ---------------------------------------------------------------------------
PER_RES=$(( FANOUT_SUBS / FANOUT_RESOURCES ))
[ "$PER_RES" -ge 1 ] || PER_RES=1
FIXED_RATE=$(awk -v d="$FIXED_DELIVERIES" -v p="$PER_RES" 'BEGIN { printf "%.3f", d / p }')

# run_one SCENARIO SERVER ROUND
run_one() {
    local sc="$1" srv="$2" round="$3"
    local json="$RESULTS_DIR/$sc-$srv-$round.json"
    local logf="$RESULTS_DIR/$sc-$srv-$round.log"
    case "$srv" in halley) start_halley ;; nchan) start_nginx ;; baseline) start_baseline ;; esac
    [ "$srv" = halley ] && [ "$HALLEY_BATCH" = unknown ] && probe_batch
    local common
    common="$(target_flags "$srv") $(pid_flags "$srv") --procs $LOAD_PROCS --json $json"
    local args
    case "$sc" in
        park)
            args="park $common --conns $PARK_CONNS --resources $PARK_RESOURCES --hold $PARK_HOLD --metrics $(metrics_url "$srv")" ;;
        fanout)
            args="fanout $common --mode stream --subscribers $FANOUT_SUBS --resources $FANOUT_RESOURCES --msg-size $MSG_SIZE --duration $DURATION" ;;
        fixed)
            args="fanout $common --mode stream --subscribers $FANOUT_SUBS --resources $FANOUT_RESOURCES --msg-size $MSG_SIZE --duration $DURATION --rate $FIXED_RATE" ;;
        longpoll)
            args="fanout $common --mode longpoll --subscribers $LP_SUBS --resources $FANOUT_RESOURCES --msg-size $MSG_SIZE --duration $DURATION --metrics $(metrics_url "$srv") $LP_PUBLISH" ;;
        longpoll_rate)
            args="fanout $common --mode longpoll --subscribers $LP_SUBS --resources $FANOUT_RESOURCES --msg-size $MSG_SIZE --duration $DURATION --metrics $(metrics_url "$srv") $LPR_PUBLISH" ;;
        portfolio)
            local pub="--batch $PF_BATCH"
            # Without /batch, halley gets the same shape as Nchan: PF_BATCH pipelined POSTs.
            if [ "$srv" = halley ] && [ "$HALLEY_BATCH" != yes ]; then pub="--batch 1 --pipeline $PF_BATCH"; fi
            args="fanout $common --mode subscribe --per-conn $PF_PER_CONN --subscribers $PF_CONNS --resources $PF_RESOURCES --msg-size $MSG_SIZE --duration $DURATION $pub" ;;
        *) log "unknown scenario $sc"; exit 1 ;;
    esac
    log "round $round: $sc on $srv"
    local rc=0
    # shellcheck disable=SC2086
    timeout -k 5 "$RUN_TIMEOUT" "$LOAD" $args >"$logf" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        log "  exit $rc ($( [ "$rc" = 2 ] && echo 'verification or errors: see log' || echo 'failed'))"
        tail -n 5 "$logf" | sed 's/^/    /' >&2
    fi
    case "$srv" in halley) stop_halley ;; nchan) stop_nginx ;; baseline) stop_baseline ;; esac
}

for round in $(seq "$ROUNDS"); do
    for sc in $SCENARIOS; do
        servers=(halley nchan)
        case "$sc" in fanout|fixed) [ "$BASELINE" = 1 ] && servers+=(baseline) ;; esac
        # Rotate the order every round, to cancel drift on a shared machine.
        n=${#servers[@]}
        for i in $(seq 0 $(( n - 1 ))); do
            run_one "$sc" "${servers[$(( (i + round - 1) % n ))]}" "$round"
        done
    done
done

# --- summary -----------------------------------------------------------------------------
# median SCENARIO SERVER JQ_EXPR: median over rounds (blank when no value).
median() {
    local sc="$1" srv="$2" expr="$3" vals=()
    for f in "$RESULTS_DIR/$sc-$srv-"*.json; do
        [ -e "$f" ] || continue
        local v
        v=$(jq -r "$expr // empty" "$f" 2>/dev/null || true)
        [ -n "$v" ] && [ "$v" != null ] && vals+=("$v")
    done
    [ "${#vals[@]}" -gt 0 ] || { echo ""; return; }
    printf '%s\n' "${vals[@]}" | sort -g | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2 }'
}

fmt() { [ -z "$1" ] && { echo "-"; return; }; awk -v v="$1" 'BEGIN { if (v >= 100 || v == int(v)) printf "%.0f", v; else printf "%.2f", v }'; }
ratio() { if [ -n "$1" ] && [ -n "$2" ] && awk -v b="$2" 'BEGIN { exit !(b != 0) }'; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo "-"; fi; }

SUMMARY="$RESULTS_DIR/summary.txt"
{
    echo
    echo "halley vs Nchan: medians of $ROUNDS round(s), $THREADS server thread(s)/worker(s), $(nproc) cores shared with the load generator"
    printf '%-70s %12s %12s %8s %12s %8s %8s\n' "scenario: metric" "halley" "nchan" "h/n" "baseline" "base/n" "h/base"
    printf '%-70s %12s %12s %8s %12s %8s %8s\n' "----------------" "------" "-----" "---" "--------" "------" "------"
    row() { # label scenario jq-expression better(higher|lower)
        local h n b
        h=$(median "$2" halley "$3"); n=$(median "$2" nchan "$3"); b=$(median "$2" baseline "$3")
        printf '%-70s %12s %12s %8s %12s %8s %8s\n' "$1 ($4 is better)" "$(fmt "$h")" "$(fmt "$n")" "$(ratio "$h" "$n")" \
            "$(fmt "$b")" "$(ratio "$b" "$n")" "$(ratio "$h" "$b")"
    }
    for sc in $SCENARIOS; do
        case "$sc" in
            park)
                row "park $PARK_CONNS: time to park all (s)" park '.results.time_to_park_s' lower
                row "park $PARK_CONNS: server bytes per parked poll" park '.results.server_bytes_per_parked_poll' lower ;;
            fanout)
                row "stream $FANOUT_SUBS subs, closed loop: deliveries/s" fanout '.results.deliveries_per_s' higher
                row "stream closed loop: p99 latency (µs)" fanout '.results.latency_us.p99_us' lower
                row "stream closed loop: deliveries per server CPU-s" fanout '.results.deliveries_per_server_cpu_s' higher
                row "stream closed loop: lost+dup+ooo" fanout '(.results.lost + .results.duplicates + .results.out_of_order)' lower ;;
            fixed)
                row "stream at $FIXED_DELIVERIES deliveries/s: achieved/s" fixed '.results.deliveries_per_s' higher
                row "stream at $FIXED_DELIVERIES/s: p50 latency (µs)" fixed '.results.latency_us.p50_us' lower
                row "stream at $FIXED_DELIVERIES/s: p99 latency (µs)" fixed '.results.latency_us.p99_us' lower
                row "stream at $FIXED_DELIVERIES/s: server CPU-s per run window" fixed '.results.server_cpu_s' lower ;;
            longpoll_rate)
                row "long poll, feed: deliveries/s" longpoll_rate '.results.deliveries_per_s' higher
                row "long poll, feed: changes/s achieved" longpoll_rate '.results.changes_per_s' higher
                row "long poll, feed: p50 latency (µs)" longpoll_rate '.results.latency_us.p50_us' lower
                row "long poll, feed: p99 latency (µs)" longpoll_rate '.results.latency_us.p99_us' lower
                row "long poll, feed: deliveries per server CPU-s" longpoll_rate '.results.deliveries_per_server_cpu_s' higher
                row "long poll, feed: lost+dup+ooo" longpoll_rate '(.results.lost + .results.duplicates + .results.out_of_order)' lower ;;
            longpoll)
                row "long poll $LP_SUBS subs: deliveries/s" longpoll '.results.deliveries_per_s' higher
                row "long poll: p99 latency (µs)" longpoll '.results.latency_us.p99_us' lower
                row "long poll: deliveries per server CPU-s" longpoll '.results.deliveries_per_server_cpu_s' higher
                row "long poll: lost+dup+ooo" longpoll '(.results.lost + .results.duplicates + .results.out_of_order)' lower ;;
            portfolio)
                row "portfolio $PF_CONNS×$PF_PER_CONN: deliveries/s" portfolio '.results.deliveries_per_s' higher
                row "portfolio: p99 latency (µs)" portfolio '.results.latency_us.p99_us' lower
                row "portfolio: deliveries per server CPU-s" portfolio '.results.deliveries_per_server_cpu_s' higher
                row "portfolio: lost+dup+ooo" portfolio '(.results.lost + .results.duplicates + .results.out_of_order)' lower ;;
        esac
    done
    echo
    echo "Nchan forms: publish POST /pub/<ch>; stream = TE: chunked subscriber; long poll = If-Modified-Since/If-None-Match"
    echo "(nchan_longpoll_multipart_response on); portfolio = multiplexed GET /multi/<a>,<b>,... with pipelined POSTs."
    if [ "$HALLEY_BATCH" != yes ]; then
        echo "halley had no POST /batch: its portfolio publisher used $PF_BATCH pipelined POSTs, like Nchan's."
    else
        echo "halley portfolio publisher: POST /batch of $PF_BATCH changes; Nchan: $PF_BATCH pipelined POSTs per write."
    fi
    [ "$BASELINE" = 1 ] && echo "baseline = halley-load baseline-server: each published chunk written once per subscriber (Nchan's chunked-stream protocol), the ceiling of the stream rows."
    echo "Per-run logs and JSON: $RESULTS_DIR"
} | tee "$SUMMARY"
