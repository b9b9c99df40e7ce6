#!/usr/bin/env bash
# Dashboard benchmark (issue 14: "with 5,000 lines and 10,000 watchers loaded, the dashboard
# starts in under 1 s and a change shows in under 100 ms"): how long `busylamp tui` takes to
# show a large site, and how long a real change takes to reach the screen.
#
# Default: the real thing.  The release server (target/release/busylamp serve; built when
# missing) runs on 127.0.0.1 with a temp data dir and its control socket, loopback trusted
# for calls, REGISTER and SUBSCRIBE (no digest), BENCH_USERS users in its config (10000..)
# and BENCH_SHARED shared lines of 2 appearances ([[bla.lines]] 20000.., nobody registered
# on them).  tests/bench/tui_load.py (Python asyncio, one UDP socket per phone) registers
# every user (its Contact on its own socket), makes BENCH_WATCHERS `dialog` (BLF)
# subscriptions among them and answers every NOTIFY 200.  Then it times:
#   snapshot  a control client's `follow` -> the snapshot's last byte (BENCH_SNAPSHOTS times)
#   start     launching `busylamp tui --socket ...` in tmux (120x40) -> every row counted
#             on the Lines view and phone 10000's row shown
#   change    phone 10001 sends an INVITE to 10000 through the proxy (10000's socket answers
#             180 at once) -> 10000's row says `ringing`
#   end       10000 answers 486 -> its row says `idle` again
# in BENCH_ROUNDS rounds (a fresh dashboard each) and prints the medians (and the max of
# the change).  "On screen" is when tmux got the dashboard's bytes: a control-mode client
# (`tmux -C attach`) stamps each `%output` as it arrives, the first one after the cause that
# holds the text (`of N`, `ringing`, `idle`) ends the figure; `capture-pane` then confirms
# the screen (polling it instead costs a few ms a read, far more on a loaded machine).
# Also printed: CPU time (what contention does not inflate) of the dashboard until its rows
# showed and of the server per snapshot; the change split at the moment a second `follow`
# client gets it (the server's part before, the stream's and the dashboard's after).
#
# --stand-in: the older, server-less variant: a Python stand-in control socket serves a
# made-up snapshot of the same size and one change (what the dashboard alone costs).
#
# Usage: tests/bench/tui.sh [--stand-in] [--build|--no-build] [--keep]
# Environment: BUSYLAMP (the binary; default target/release/busylamp), BENCH_USERS=5000
#   BENCH_WATCHERS=10000 BENCH_SHARED=100 BENCH_ROUNDS=5 BENCH_SNAPSHOTS=5
#   BENCH_SETTLE_S=2 (seconds between the rows showing and the call: 0 places the call
#   while the dashboard's start-up queries, users_list pages, still run: the INVITE waits
#   behind them on the server, ~70-100 ms on a loaded 2-core machine)
#   (--stand-in: BENCH_AORS=BENCH_USERS, default binary release else debug)
# Targets (issue 14): start < 1 s, change < 100 ms.
# Loopback only; the loader is bounded (timeout(1), its own budget); the server and tmux
# are stopped by PID / by their own socket on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../.."

MODE=real
BUILD=build
KEEP=0
for arg in "$@"; do
    case "$arg" in
    --stand-in) MODE=stand-in ;;
    --build) BUILD=force ;;
    --no-build) BUILD=never ;;
    --keep) KEEP=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
command -v tmux >/dev/null || { echo "SKIPPED: tmux is not installed"; exit 0; }

# The server-less variant (a stand-in control socket); what it measured before the real one.
stand_in() {

AORS=${BENCH_AORS:-${BENCH_USERS:-5000}}
WATCHERS=${BENCH_WATCHERS:-10000}
SHARED=${BENCH_SHARED:-100}
ROUNDS=${BENCH_ROUNDS:-5}
BIN=${BUSYLAMP:-}
if [ -z "$BIN" ]; then
    if [ -x target/release/busylamp ]; then BIN=target/release/busylamp; else BIN=target/debug/busylamp; fi
fi
[ -x "$BIN" ] || { echo "no busylamp binary at $BIN (cargo build first)"; exit 1; }
BIN=$(realpath "$BIN")

WORK=$(mktemp -d /tmp/busylamp-tui-bench.XXXXXX)
TMUX_SOCK="busylamp-tui-bench-$$"
SERVER_PID=""
cleanup() {
    tmux -L "$TMUX_SOCK" kill-server 2>/dev/null || true
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/fake.py" <<'EOF'
# A control socket that serves one `follow` per connection: the snapshot, then (when the
# file "go" appears) one change, whose send time it writes to "sent".
import json, os, socket, sys, threading, time
path, work, aors, watchers, shared = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
now = int(time.time())
dom = "example.com"
regs = [{"aor": f"sip:{10000+i}@{dom}", "contacts": [{"contact": f"sip:{10000+i}@10.{i//250%250}.{i%250}.1:5060",
         "expires": now + 3600, "user_agent": "Yealink SIP-T46U 108.86.0.20", "flow": f"udp:10.0.0.1:{5060+i%1000}",
         "q": 1.0, "instance": None, "reg_id": None, "registered": now - 60}]} for i in range(aors)]
subs = [{"kind": "watcher", "watcher": f"sip:{10000+(i*7+1)%aors}@{dom}", "presentity": f"sip:{10000+i%aors}@{dom}",
         "package": "dialog", "state": "active" if i % 50 else "pending", "expires": now + 1800, "cseq": 3,
         "version": 2, "failures": 0, "user_agent": "Yealink SIP-T46U", "last_answer": 200} for i in range(watchers)]
lines = [{"aor": f"sip:{20000+i}@{dom}", "label": f"Line {i}", "appearances": [
          {"index": a, "state": "free", "phone": None, "contact": None, "peer": None, "since": now - 600} for a in (1, 2)],
          "phones": [{"phone": f"sip:{10000+i}@{dom}", "contact": f"sip:{10000+i}@10.0.0.1", "user_agent": None,
                      "subscribed": True}]} for i in range(shared)]
snapshot = {"jsonrpc": "2.0", "method": "snapshot", "params": {"seq": 0,
    "status": {"api": 1, "version": "0.1.0", "uptime": 86400, "listen": ["udp:0.0.0.0:5060"]},
    "registrations": regs, "calls": [], "subscriptions": subs, "lines": lines}}
snap_line = (json.dumps(snapshot) + "\n").encode()
change = {"jsonrpc": "2.0", "method": "change", "params": {"seq": 1, "kind": "call", "call_id": "bench-1",
          "caller": f"sip:{10001}@{dom}", "callee": f"sip:{10000}@{dom}", "state": "early"}}
change_line = (json.dumps(change) + "\n").encode()
print(f"snapshot: {len(snap_line)} bytes", flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
go = os.path.join(work, "go")

def serve(c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line:  # gone (or the dashboard's first look: is anyone there?)
            return
        req = json.loads(line)
        if req["method"] != "follow":
            # users_list, subscriptions: nothing more to add.
            c.sendall((json.dumps({"jsonrpc": "2.0", "id": req["id"],
                                   "result": {"total": 0, "items": []}}) + "\n").encode())
            continue
        c.sendall((json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": {"following": True}}) + "\n").encode())
        c.sendall(snap_line)
        for _ in range(6000):  # at most 60 s
            if os.path.exists(go):
                break
            time.sleep(0.001)
        if os.path.exists(go):
            c.sendall(change_line)
            with open(os.path.join(work, "sent"), "w") as out:
                out.write(repr(time.time()))
            os.remove(go)

def guarded(c):
    try:
        serve(c)
    except OSError:
        pass
    finally:
        c.close()

while True:
    c, _ = s.accept()
    threading.Thread(target=guarded, args=(c,), daemon=True).start()
EOF

python3 "$WORK/fake.py" "$WORK/control.sock" "$WORK" "$AORS" "$WATCHERS" "$SHARED" >"$WORK/fake.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do [ -S "$WORK/control.sock" ] && break; sleep 0.05; done
[ -S "$WORK/control.sock" ] || { cat "$WORK/fake.log"; exit 1; }
cat "$WORK/fake.log"

cat >"$WORK/measure.py" <<'EOF'
# One round: start the dashboard in tmux, time until the rows show; then ask for the change
# and time until the first user's row says ringing.
import os, subprocess, sys, time
sock, work, binary, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def screen():
    return subprocess.run(["tmux", "-L", sock, "capture-pane", "-p", "-t", "tui"],
                          capture_output=True, text=True).stdout
def until(ok, limit):
    t0 = time.time()
    while time.time() - t0 < limit:
        s = screen()
        if ok(s):
            return time.time(), s
        time.sleep(0.005)
    sys.exit("timed out; screen:\n" + screen())
t0 = time.time()
subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", "-s", "tui",
                f"{binary} tui --socket {work}/control.sock; sleep 60"], check=True, env={**os.environ, "TERM": "xterm-256color"})
t1, _ = until(lambda s: f"of {rows}" in s and "10000 " in s, 30)
open(os.path.join(work, "go"), "w").close()
def ringing(s):
    return any(l.split()[:1] == ["10000"] and "ringing" in l.split() for l in s.splitlines())
t2, s = until(ringing, 10)
sent = float(open(os.path.join(work, "sent")).read())
os.remove(os.path.join(work, "sent"))
subprocess.run(["tmux", "-L", sock, "kill-server"])
print(f"{(t1 - t0) * 1000:.0f} {(t2 - sent) * 1000:.1f}")
EOF

echo "busylamp tui ($BIN): $AORS users, $WATCHERS watchers, $SHARED shared lines (2 appearances each)"
starts=(); changes=()
for r in $(seq 1 "$ROUNDS"); do
    read -r start change < <(python3 "$WORK/measure.py" "$TMUX_SOCK" "$WORK" "$BIN" "$((AORS + 3 * SHARED))")
    echo "round $r: rows on screen after ${start} ms; the change on screen ${change} ms after it was sent"
    starts+=("$start"); changes+=("$change")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: start $(median "${starts[@]}") ms (target < 1000), change $(median "${changes[@]}") ms (target < 100)"
}

if [[ "$MODE" == stand-in ]]; then
    stand_in
    exit 0
fi

# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"
USERS=${BENCH_USERS:-5000}
WATCHERS=${BENCH_WATCHERS:-10000}
SHARED=${BENCH_SHARED:-100}
ROUNDS=${BENCH_ROUNDS:-5}
SNAPSHOTS=${BENCH_SNAPSHOTS:-5}
bl_need_tools python3
BIN="$(bl_resolve_busylamp "$BUILD")" || { echo "no busylamp binary (cargo build --release)"; exit 1; }
BIN=$(realpath "$BIN")
# One UDP socket per phone in the loader, the tmux server, the server's files.
ulimit -n $((USERS + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/busylamp-tui-bench.XXXXXX)
TMUX_SOCK="busylamp-tui-bench-$$"
cleanup() {
    local rc=$?
    tmux -L "$TMUX_SOCK" kill-server 2>/dev/null || true
    bl_stop_all_servers
    if ((KEEP)) || ((rc != 0)); then bl_log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port="$(bl_free_port)"
bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" 0 "" digest '["127.0.0.0/8"]' \
    '["calls", "register", "subscribe"]'
sed -i "s|^\[server\]|[server]\nlog = \"warn\"|" "$WORK/busylamp.toml"
bl_presence_toml >>"$WORK/busylamp.toml"
{
    printf '\n[control]\nsocket = "%s"\n' "$WORK/control.sock"
    awk -v n="$USERS" -v s="$SHARED" 'BEGIN {
        for (i = 0; i < n; i++) printf "\n[[users]]\nname = \"%d\"\npassword = \"pw%d\"\n", 10000 + i, 10000 + i
        for (i = 0; i < s; i++) printf "\n[[users]]\nname = \"%d\"\npassword = \"pw%d\"\n", 20000 + i, 20000 + i
        for (i = 0; i < s; i++) printf "\n[[bla.lines]]\naor = \"%d\"\nlabel = \"Line %d\"\nappearances = 2\n", 20000 + i, i
    }'
} >>"$WORK/busylamp.toml"

echo "== busylamp tui benchmark (real server) — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:  nproc=$(nproc), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "busylamp: $BIN (git $(git rev-parse --short HEAD 2>/dev/null || echo none); built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))"
echo "load:     $USERS users registered (UDP, a socket each), $WATCHERS dialog subscriptions, $SHARED shared lines x 2 appearances"
bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
bl_wait_ready "$BL_SERVER_PID" "$port" 60 || { tail -20 "$WORK/busylamp.log"; exit 1; }

rc=0
timeout 1200 python3 "$HERE/tui_load.py" --server "127.0.0.1:$port" --socket "$WORK/control.sock" --bin "$BIN" \
    --users "$USERS" --watchers "$WATCHERS" --rows $((USERS + 3 * SHARED)) --rounds "$ROUNDS" \
    --snapshots "$SNAPSHOTS" --tmux-socket "$TMUX_SOCK" --server-pid "$BL_SERVER_PID" --settle-s "${BENCH_SETTLE_S:-2}" --budget-s 1100 >"$WORK/load.out" 2>"$WORK/load.err" || rc=$?
cat "$WORK/load.out"
if ((rc != 0)); then
    echo "loader exit $rc:"; tail -40 "$WORK/load.err"; exit 1
fi
kill -0 "$BL_SERVER_PID" 2>/dev/null || { echo "the server died (see $WORK/busylamp.log)"; KEEP=1; exit 1; }
field() { grep "^${2:-ROUND}" "$WORK/load.out" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
mapfile -t starts < <(field start_ms)
mapfile -t changes < <(field change_ms)
mapfile -t ends < <(field end_ms)
mapfile -t to_180 < <(field invite_to_180_ms)
mapfile -t to_pub < <(field invite_to_published_ms)
mapfile -t pub_to_screen < <(field published_to_screen_ms)
mapfile -t tui_cpus < <(field tui_cpu_at_start_ms)
max_change=$(printf '%s\n' "${changes[@]}" | sort -g | tail -1)
echo "median over $ROUNDS rounds: start $(bl_median -d 0 "${starts[@]}") ms (target < 1000), change $(bl_median "${changes[@]}") ms (max $max_change; target < 100), end $(bl_median "${ends[@]}") ms; snapshot $(field median_ms SNAPSHOT) ms ($(field bytes SNAPSHOT) bytes)"
echo "  of the change: INVITE -> a second follow client got the change $(bl_median "${to_pub[@]}") ms (INVITE -> the callee's socket got it $(bl_median "${to_180[@]}") ms); that change -> on screen $(bl_median "${pub_to_screen[@]}") ms (max $(printf '%s\n' "${pub_to_screen[@]}" | sort -g | tail -1))"
echo "  CPU time (not wall clock; what contention does not inflate): the dashboard until its rows showed $(bl_median -d 0 "${tui_cpus[@]}") ms; the server per snapshot $(field median_cpu_ms SNAPSHOT) ms"
echo "server: RSS $(bl_rss_kb "$BL_SERVER_PID") kB; load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine: other builds run meanwhile)"
