#!/usr/bin/env bash
# Dashboard benchmark: how long `busylamp tui` takes to show a large site, and how long a
# change takes to reach the screen.
#
# A stand-in control socket (Python, below) answers `follow` with a snapshot of
# BENCH_AORS registered users (one phone each), BENCH_WATCHERS dialog watchers and
# BENCH_SHARED shared lines, as the server's `follow` does; then, once the screen shows the
# rows, it sends one `change` (the first user's phone rings) and notes when. The dashboard
# runs in tmux (120x40); the screen is read with capture-pane every 5 ms, so each figure is
# at most ~5 ms (plus one capture) above the truth. What the server spends building its
# snapshot is not in these figures (see `busylamp ctl follow` timings in the README).
#
# Usage: tests/bench/tui.sh            (BUSYLAMP=path/to/busylamp to pick the binary;
#                                       default target/release/busylamp, else target/debug)
# Environment: BENCH_AORS=5000 BENCH_WATCHERS=10000 BENCH_SHARED=100 BENCH_ROUNDS=5
# Targets (issue 14): start < 1 s, change < 100 ms.
set -euo pipefail
cd "$(dirname "$0")/../.."

AORS=${BENCH_AORS:-5000}
WATCHERS=${BENCH_WATCHERS:-10000}
SHARED=${BENCH_SHARED:-100}
ROUNDS=${BENCH_ROUNDS:-5}
BIN=${BUSYLAMP:-}
if [ -z "$BIN" ]; then
    if [ -x target/release/busylamp ]; then BIN=target/release/busylamp; else BIN=target/debug/busylamp; fi
fi
[ -x "$BIN" ] || { echo "no busylamp binary at $BIN (cargo build first)"; exit 1; }
command -v tmux >/dev/null || { echo "SKIPPED: tmux is not installed"; exit 0; }
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
