#!/usr/bin/env bash
# Restart burst: what a restart with many subscriptions whose watchers are gone
# costs in memory.  After a start busylamp owes every watcher a full-state
# NOTIFY (src/presence/restore.rs); when the watchers have gone away (phones
# unplugged, a sipp that ended) every one of those NOTIFYs fails and is
# retried.  An earlier build went from 418 MB to 840 MB here with 50,000
# subscriptions (issue 15); this script measures it.
#
# Usage: tests/bench/restart_burst.sh [--keep]
#   Builds nothing: run `cargo build --release` first (or set BUSYLAMP).
# Environment (defaults):
#   BUSYLAMP              busylamp binary (target/release/busylamp)
#   BENCH_SUBS=50000      subscriptions (presence_subscribe.xml, distinct
#                         watcher/presentity pairs, Expires 3600)
#   BENCH_WATCH_S=45      seconds sampled after the restart (past Timer F,
#                         32 s: the first round of failures is over)
#   BENCH_PIN=0           1: server on one core, sipp on the other (tests/interop/lib.sh)
#
# Steps: start busylamp (the bench config: open auth, presence for everyone in
# the domain), BENCH_SUBS subscriptions from one sipp, which then ends (its
# port closes: every later NOTIFY to it fails); VmRSS settled; kill -9; start
# again on the same data dir; VmRSS every second for BENCH_WATCH_S s, and the
# server's CPU time over that window.  Printed: RSS per subscription before the
# kill, at the restart's peak, and at the end of the window.
#
# Loopback only; sipp is bounded by -m and timeout(1); the server is stopped
# by PID on exit.

# shellcheck disable=SC2086
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"
KEEP=0
for arg in "$@"; do
    case "$arg" in
    --keep) KEEP=1 ;;
    -h | --help) bl_usage "$0"; exit 0 ;;
    *) bl_die "unknown argument: $arg (see --help)" ;;
    esac
done
SUBS="${BENCH_SUBS:-50000}"
WATCH_S="${BENCH_WATCH_S:-45}"
bl_need_tools
BIN="$(bl_resolve_busylamp never)" || bl_die "no busylamp binary: cargo build --release (or set BUSYLAMP)"

bl_bench_workdir busylamp-restart-burst

echo "== busylamp restart burst — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "busylamp: $BIN (git $(git -C "$(bl_repo_top)" rev-parse --short HEAD 2>/dev/null || echo none)); $SUBS subscriptions; load $(cut -d' ' -f1-3 /proc/loadavg)"
bl_pin_note
port="$(bl_free_port)"
bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" 0 '' open
bl_presence_toml >>"$WORK/busylamp.toml" # [presence] keys: tests/interop/lib.sh
awk -v n="$SUBS" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"
    for (i = 1; i <= n; i++) printf "r%06d;rp%06d;%s\n", i, i, d
}' >"$WORK/subs.csv"

bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/server-1.log"
bl_wait_ready "$BL_SERVER_PID" "$port" || bl_die "busylamp did not start (log: $WORK/server-1.log)"
r0="$(bl_rss_kb "$BL_SERVER_PID")"
bl_sipp_run subs "$port" u1 "$HERE/presence_subscribe.xml" "$WORK/subs.csv" "$SUBS" "$WORK" 120 \
    -default_behaviors all,-bye -buff_size 4194304 -users 200
bl_sipp_clean "$SUBS" || { bl_sipp_explain >&2; bl_die "the subscriptions did not all succeed"; }
sleep 3
r1="$(bl_rss_kb "$BL_SERVER_PID")"
bl_log "subscribed: VmRSS $r0 -> $r1 kB; kill -9"
kill -9 "$BL_SERVER_PID"
wait "$BL_SERVER_PID" 2>/dev/null || true

bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/server-2.log"
pid="$BL_SERVER_PID"
t0="$(bl_cpu_ticks "$pid")"
peak=0 samples=()
for i in $(seq 1 "$WATCH_S"); do
    sleep 1
    r="$(bl_rss_kb "$pid")"
    samples+=("$r")
    ((r > peak)) && peak=$r
done
t1="$(bl_cpu_ticks "$pid")"
last="${samples[-1]}"
per() { echo $((($1 - r0) * 1024 / SUBS)); }
echo
echo "VmRSS, kB (B per subscription over the empty server's $r0 kB):"
echo "  before the kill (settled)     $r1 ($(per "$r1"))"
echo "  after the restart, peak       $peak ($(per "$peak"))"
echo "  after the restart, at ${WATCH_S} s    $last ($(per "$last"))"
echo "  every 5 s: $(for i in "${!samples[@]}"; do (((i + 1) % 5 == 0)) && printf '%s ' "${samples[$i]}"; done)"
echo "server CPU over the ${WATCH_S} s: $(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f s", t / hz }')"
