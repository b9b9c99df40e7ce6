#!/usr/bin/env python3
"""What ran on the server's core while a slow lamp waited (calls.sh BENCH_SCHED=1).

Reads the lamp capture of one (b) round (as calls_lamp.py) and `perf script -F
cpu,time,event,trace` of `perf record -a -k mono -e sched:sched_switch -e
sched:sched_wakeup` over the same round (every core: a wake-up is recorded on the
waker's core); CORE is the one the server is pinned to (BENCH_PIN=1).  For every call whose first early NOTIFY left more than
SLOW_MS (3 ms) after the 180, the time between the two is split by what the core
ran: the server's threads (TIDS), other processes (by name), or nothing (idle);
and `waited` is how long a server thread was runnable (woken, or preempted)
while another process had the core: the time the server lost to its neighbours.
Other processes running while the server had nothing to do (e.g. a NOTIFY held
until the watcher answered the previous one) are not `waited`.

Usage: calls_lamp_sched.py SCHED.txt MONO_TO_REAL CAPTURE.pcap PROXY_PORT UAS_PORT
                           WATCHER_PORT TIDS CORE
  MONO_TO_REAL: CLOCK_REALTIME - CLOCK_MONOTONIC in seconds when perf started
  (perf's clock is monotonic, the capture's is the wall clock)
  TIDS: comma-separated thread ids of the server (every process, for Kamailio)
Output: one line per slow call, then
  SCHED slow_calls=N waited_ms=.. server_ms=.. others_ms=.. idle_ms=..
        others=NAME:ms,...
"""

import re
import sys

sys.dont_write_bytecode = True
from calls_lamp import ENTITY, calls_in, norm_uri  # noqa: E402 (same directory)
from presence_fanout import packets, parse_sip  # noqa: E402

SLOW_MS = 3.0
SWITCH = re.compile(
    r"\s*\[(\d+)\]\s+([\d.]+): sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) .*?==> next_comm=(.*?) next_pid=(\d+)"
)


WAKEUP = re.compile(r"\s*\[\d+\]\s+([\d.]+): sched:sched_wakeup: comm=(.*?) pid=(\d+) ")


def runs_of(path, offset, tids, core):
    """what ran on the core, [(start, end, comm, tid)], and when a server thread was
    runnable but off the core, [(start, end)], in wall-clock seconds"""
    out, cur = [], None
    ready = {}  # server tid -> runnable since
    waits = []
    with open(path, errors="replace") as f:
        for line in f:
            m = WAKEUP.match(line)
            if m:
                if m.group(3) in tids:
                    ready.setdefault(m.group(3), float(m.group(1)) + offset)
                continue
            m = SWITCH.match(line)
            if not m or int(m.group(1)) != core:
                continue
            t = float(m.group(2)) + offset
            if cur is not None:
                out.append((cur[0], t, cur[1], cur[2]))
            prev, nxt = m.group(4), m.group(6)
            # preempted (state R): still runnable
            if prev in tids and " prev_state=R" in line:
                ready.setdefault(prev, t)
            if nxt in ready:
                waits.append((ready.pop(nxt), t))
            cur = (t, m.group(5), nxt)
    return out, waits


def main():
    if len(sys.argv) != 9:
        raise SystemExit(__doc__)
    sched, offset, pcap = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    pport, uport, wport = (int(a) for a in sys.argv[4:7])
    tids = set(sys.argv[7].split(","))
    core = int(sys.argv[8])
    t180, subs, entity_of = {}, {}, {}
    for ts, sport, dport, payload in packets(pcap):
        if sport == uport and dport == pport and payload.startswith(b"SIP/2.0 180"):
            msg = parse_sip(payload)
            if msg is not None:
                cid = msg[1].get(b"call-id", b"")
                if cid and cid not in t180:
                    t180[cid] = (ts, norm_uri(msg[1].get(b"to", b"")))
        elif sport == pport and dport == wport and payload.startswith(b"NOTIFY "):
            msg = parse_sip(payload)
            if msg is None:
                continue
            sid = msg[1].get(b"call-id", b"")
            subs.setdefault(sid, []).append((ts, calls_in(msg[2])))
            if sid not in entity_of:
                m = ENTITY.search(msg[2])
                if m:
                    entity_of[sid] = m.group(1).lower()
    watchers_of = {}
    for sid, ent in entity_of.items():
        watchers_of.setdefault(ent, []).append(sid)
    runs, waits = runs_of(sched, offset, tids, core)
    t_first = min((t for t, _ in t180.values()), default=0.0)
    n, tot_server, tot_idle, tot_waited, others = 0, 0.0, 0.0, 0.0, {}
    for cid, (t0, callee) in sorted(t180.items(), key=lambda kv: kv[1][0]):
        hits = []
        for sid in watchers_of.get(callee, []):
            for t, calls in sorted(subs[sid], key=lambda x: x[0]):
                if t >= t0 and cid in calls and calls[cid][1]:
                    hits.append(t)
                    break
        if not hits or (min(hits) - t0) * 1000.0 <= SLOW_MS:
            continue
        first = min(hits)
        n += 1
        server = idle = 0.0
        here = {}
        mine = {}  # the server's time by thread name (runtime, store writer)
        for s, e, comm, tid in runs:
            if e <= t0 or s >= first:
                continue
            d = (min(e, first) - max(s, t0)) * 1000.0
            if tid in tids:
                server += d
                mine[comm] = mine.get(comm, 0.0) + d
            elif comm.startswith("swapper"):
                idle += d
            else:
                here[comm] = here.get(comm, 0.0) + d
                others[comm] = others.get(comm, 0.0) + d
        # the server runnable while another process had the core (union of intervals)
        spans = sorted((max(a, t0), min(b, first)) for a, b in waits if b > t0 and a < first)
        waited, end = 0.0, t0
        for a, b in spans:
            if b > end:
                waited += b - max(a, end)
                end = b
        waited = min(waited * 1000.0, sum(here.values()))
        tot_server += server
        tot_idle += idle
        tot_waited += waited
        shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(here.items(), key=lambda x: -x[1])[:4])
        print(
            f"  slow call at {t0 - t_first:6.2f} s: first early NOTIFY {(first - t0) * 1000.0:5.1f} ms;"
            f" server waited {waited:.1f} ms for its core; core: server {server:.1f}"
            f" ({', '.join(f'{k} {v:.1f}' for k, v in sorted(mine.items(), key=lambda x: -x[1]))}), idle {idle:.1f},"
            f" others {sum(here.values()):.1f} ms ({shown or '-'})"
        )
    top = ",".join(f"{k.replace(' ', '_')}:{v:.0f}" for k, v in sorted(others.items(), key=lambda x: -x[1])[:5])
    print(
        f"SCHED slow_calls={n} waited_ms={tot_waited:.1f} server_ms={tot_server:.1f} others_ms={sum(others.values()):.1f}"
        f" idle_ms={tot_idle:.1f} others={top or '-'}"
    )


if __name__ == "__main__":
    main()
