#!/usr/bin/env python3
"""Loader and stopwatch for tests/bench/tui.sh against a real busylamp server.

Set-up (UDP on loopback, one socket per phone, like a real site):
  USERS phones register (user 10000.., Contact on the phone's own socket, trusted source:
  no digest); then WATCHERS `dialog` (BLF) subscriptions, subscription i from phone
  (7i + 1 + 2*(i // USERS)) mod USERS to phone i mod USERS (never itself, every pair once);
  every NOTIFY the server sends is answered 200.  At most WINDOW requests are in flight;
  each is retransmitted (T1 doubling) until its final answer, 32 s at most.

Then:
  snapshot  SNAPSHOTS times: a control client sends `follow` and reads the snapshot line;
            the time from the request to its last byte (the server builds and writes it,
            the client reads it) and its size.
  rounds    ROUNDS times: `busylamp tui --socket SOCK` starts in a tmux session (120x40);
            start = launch -> the screen shows the Lines view with every row counted
            ("of N") and phone 10000's row.  Then phone 10001 INVITEs sip:10000 through the
            proxy; phone 10000's socket answers 180 at once; change = the INVITE sent ->
            the screen shows 10000's row `ringing`.  Then 10000 answers 486 (the caller ACKs);
            end = the 486 sent -> the row shows `idle` again.  "Shows" is when tmux got the
            dashboard's bytes: a control-mode client (`tmux -C attach`) stamps every
            `%output` as it arrives; the first one after the cause that completes the text
            (`of N`, `ringing`, `idle`) ends the figure, and `capture-pane` then confirms the
            screen.  invite_to_180: the callee's socket got the INVITE (the proxy's part,
            and this process's own delay); invite_to_published: a second `follow` client
            got the call's first change; published_to_screen: from then to the screen (the
            stream and the dashboard's part).

Output: SETUP/SNAPSHOT/ROUND lines (key=value) on stdout; exit 1 on a failed set-up.
Loopback only; every wait is bounded (--budget-s overall).
"""

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time

T1 = 0.5
DOMAIN = "example.test"
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=sendrecv\r\n")


def branch():
    return "z9hG4bK" + secrets.token_hex(8)


class Msg:
    def __init__(self, data):
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first = lines[0]
        self.headers = {}
        for ln in lines[1:]:
            name, sep, value = ln.partition(":")
            if sep:
                name = name.strip().lower()
                self.headers.setdefault(COMPACT.get(name, name), []).append(value.strip())
        parts = self.first.split(" ", 2)
        self.is_response = parts[0].startswith("SIP/")
        self.status = int(parts[1]) if self.is_response else None
        self.method = None if self.is_response else parts[0]
        cseq = self.h("cseq").split()
        self.cseq = (int(cseq[0]), cseq[1]) if len(cseq) == 2 else (0, "")

    def h(self, name):
        v = self.headers.get(name)
        return v[0] if v else ""

    def all(self, name):
        return self.headers.get(name, [])


class Phone(asyncio.DatagramProtocol):
    def __init__(self, load, user):
        self.load = load
        self.user = user
        self.port = 0
        self.transport = None
        # The callee side of the bench call: the INVITE and our To tag.
        self.invite = None
        self.invite_from = None
        self.to_tag = None

    def connection_made(self, transport):
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def uri(self):
        return f"sip:{self.user}@{DOMAIN}"

    def contact(self):
        return f"<sip:{self.user}@127.0.0.1:{self.port}>"

    def send(self, data, addr=None):
        self.transport.sendto(data, addr or self.load.server)

    def datagram_received(self, data, addr):
        if not data.strip():
            return
        try:
            msg = Msg(data)
        except (ValueError, IndexError):
            self.load.stats["bad"] += 1
            return
        if msg.is_response:
            key = (msg.h("call-id"), msg.cseq)
            waiter = self.load.pending.get(key)
            if waiter:
                waiter(msg)
            return
        if msg.method == "NOTIFY":
            self.load.stats["notifies"] += 1
            self.reply(msg, addr, 200, "OK")
        elif msg.method == "INVITE":
            self.on_invite(msg, addr)
        elif msg.method in ("ACK",):
            pass
        elif msg.method in ("OPTIONS", "BYE", "CANCEL"):
            self.reply(msg, addr, 200, "OK")
        else:
            self.reply(msg, addr, 405, "Method Not Allowed")

    def reply(self, req, addr, code, reason, to_tag=None, extra=()):
        to = req.h("to")
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in req.all("via")]
        lines += [f"Record-Route: {v}" for v in req.all("record-route")]
        lines += [f"From: {req.h('from')}", f"To: {to}", f"Call-ID: {req.h('call-id')}",
                  f"CSeq: {req.h('cseq')}"]
        lines += list(extra)
        lines += ["Content-Length: 0", "", ""]
        self.send("\r\n".join(lines).encode(), addr)

    def on_invite(self, msg, addr):
        # The callee phone: rings at once (a retransmitted INVITE gets the 180 again).
        if self.invite is None or self.invite.h("call-id") != msg.h("call-id"):
            self.invite, self.invite_from, self.to_tag = msg, addr, secrets.token_hex(6)
            self.load.ring_sent = time.perf_counter()
        self.reply(msg, addr, 180, "Ringing", self.to_tag, [f"Contact: {self.contact()}"])

    def busy(self):
        """The callee declines the ringing call: 486."""
        self.reply(self.invite, self.invite_from, 486, "Busy Here", self.to_tag)


class Load:
    def __init__(self, args):
        host, port = args.server.rsplit(":", 1)
        self.server = (host, int(port))
        self.args = args
        self.phones = {}
        self.pending = {}
        self.stats = {"bad": 0, "notifies": 0, "retransmitted": 0}
        self.ring_sent = None
        self.loop = None

    async def open(self):
        loop = asyncio.get_running_loop()
        for i in range(self.args.users):
            user = 10000 + i
            _, p = await loop.create_datagram_endpoint(lambda u=user: Phone(self, u), local_addr=("127.0.0.1", 0))
            self.phones[user] = p

    async def transact(self, phone, data, call_id, cseq, final_only=True, on_msg=None):
        """Sends until a final answer (T1 doubling up to 4 s, 32 s at most); the answer or None."""
        fut = asyncio.get_running_loop().create_future()

        def waiter(msg):
            if on_msg:
                on_msg(msg)
            if msg.status >= 200 and not fut.done():
                fut.set_result(msg)
            elif msg.status >= 100 and not fut.done():
                fut.provisional = True

        self.pending[(call_id, cseq)] = waiter
        interval, waited = T1, 0.0
        try:
            phone.send(data)
            while waited < 32.0:
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), interval)
                except asyncio.TimeoutError:
                    waited += interval
                    if getattr(fut, "provisional", False) and cseq[1] == "INVITE":
                        interval = 4.0  # a ringing INVITE is not retransmitted (RFC 3261 17.1.1.2)
                        continue
                    interval = min(interval * 2, 4.0)
                    self.stats["retransmitted"] += 1
                    phone.send(data)
            return None
        finally:
            self.pending.pop((call_id, cseq), None)

    def request(self, phone, method, ruri, to, call_id, cseq, extra=(), body="", from_tag=None, br=None):
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{phone.port};branch={br or branch()};rport",
                 "Max-Forwards: 70",
                 f"From: <{phone.uri()}>;tag={from_tag or secrets.token_hex(6)}",
                 f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: {phone.contact()}"]
        lines += list(extra)
        lines += [f"Content-Length: {len(body)}", "", body]
        return "\r\n".join(lines).encode()

    async def register(self, user):
        p = self.phones[user]
        cid = f"reg-{user}-{secrets.token_hex(4)}"
        data = self.request(p, "REGISTER", f"sip:{DOMAIN}", f"<{p.uri()}>", cid, 1,
                            ["Expires: 3600", "User-Agent: Yealink SIP-T46U 108.86.0.20"])
        r = await self.transact(p, data, cid, (1, "REGISTER"))
        return r is not None and r.status == 200

    async def subscribe(self, i):
        n = self.args.users
        watcher = 10000 + (7 * i + 1 + 2 * (i // n)) % n
        presentity = 10000 + i % n
        p = self.phones[watcher]
        cid = f"sub-{i}-{secrets.token_hex(4)}"
        data = self.request(p, "SUBSCRIBE", f"sip:{presentity}@{DOMAIN}", f"<sip:{presentity}@{DOMAIN}>", cid, 1,
                            ["Event: dialog", "Accept: application/dialog-info+xml", "Expires: 3600",
                             "User-Agent: Yealink SIP-T46U 108.86.0.20"])
        r = await self.transact(p, data, cid, (1, "SUBSCRIBE"))
        return r is not None and r.status in (200, 202)

    async def bounded(self, coros):
        sem = asyncio.Semaphore(self.args.window)
        ok = 0

        async def one(c):
            nonlocal ok
            async with sem:
                if await c:
                    ok += 1

        await asyncio.gather(*(one(c) for c in coros))
        return ok

    async def call(self, caller, callee, call_id):
        """The caller INVITEs the callee through the proxy; returns (the time the INVITE
        was sent, a future of the final answer)."""
        p = self.phones[caller]
        tag, br = secrets.token_hex(6), branch()
        data = self.request(p, "INVITE", f"sip:{callee}@{DOMAIN}", f"<sip:{callee}@{DOMAIN}>", call_id, 1,
                            ["Content-Type: application/sdp"], SDP, from_tag=tag, br=br)
        sent = time.perf_counter()

        async def run():
            final = await self.transact(p, data, call_id, (1, "INVITE"))
            if final is not None and final.status >= 300:
                # The ACK of a non-2xx final answer: same branch, the answer's To.
                ack = [f"ACK sip:{callee}@{DOMAIN} SIP/2.0",
                       f"Via: SIP/2.0/UDP 127.0.0.1:{p.port};branch={br};rport", "Max-Forwards: 70",
                       f"From: <{p.uri()}>;tag={tag}", f"To: {final.h('to')}", f"Call-ID: {call_id}",
                       "CSeq: 1 ACK", "Content-Length: 0", "", ""]
                p.send("\r\n".join(ack).encode())
            return final

        return sent, asyncio.ensure_future(run())


async def wait_for(fut, seconds):
    return await asyncio.wait_for(fut, seconds)


def in_loop(load, coro, timeout):
    return asyncio.run_coroutine_threadsafe(coro, load.loop).result(timeout)


def control(sock_path, method, params=None, read_notification=False):
    """One request on the control socket: (answer, seconds to the last byte, bytes)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock_path)
    f = s.makefile("rb")
    t0 = time.perf_counter()
    s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}) + "\n").encode())
    line = f.readline()
    if read_notification:
        line = f.readline()  # the snapshot after the `follow` answer
    took = time.perf_counter() - t0
    s.close()
    return json.loads(line), took, len(line)


class Output:
    """A tmux control-mode client (`tmux -C attach`) of the session: every byte the program
    in the pane writes comes as a `%output` line, stamped here as it arrives. That tells when
    the terminal got a change, without the delay of polling `capture-pane`."""

    def __init__(self, sock):
        self.proc = subprocess.Popen(["tmux", "-L", sock, "-C", "attach", "-t", "tui"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()
        self.chunks = []  # (perf_counter, text)
        self.ready = threading.Event()
        threading.Thread(target=self.read, daemon=True).start()
        if not self.ready.wait(10):
            sys.exit("tmux control mode did not start")

    def read(self):
        for raw in self.proc.stdout:
            t = time.perf_counter()
            self.ready.set()
            if raw.startswith(b"%output "):
                text = raw.split(b" ", 2)[2].rstrip(b"\n").decode("utf-8", "replace")
                with self.lock:
                    self.chunks.append((t, text))

    def first(self, needle, after, limit):
        """When the first output after `after` that completes `needle` arrived."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit:
            with self.lock:
                recent = [(t, x) for t, x in self.chunks if t >= after]
            joined, ends = "", []
            for t, x in recent:
                joined += x
                ends.append((len(joined), t))
            at = joined.find(needle)
            if at >= 0:
                end = at + len(needle)
                return next(t for n, t in ends if n >= end)
            time.sleep(0.002)
        sys.exit(f"no output with {needle!r} within {limit}s")

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.kill()  # our own child, by its handle
        self.proc.wait()


class Follower:
    """A second `follow` client: stamps each call `change` line as it arrives, so the figure
    can be split into the server's part (the INVITE until the change is published) and the
    dashboard's (published until on screen)."""

    def __init__(self, sock_path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock_path)
        self.sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"follow","params":{}}\n')
        self.lock = threading.Lock()
        self.calls = []  # (perf_counter, call_id, state)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.sock.makefile("rb"):
            t = time.perf_counter()
            if b'"kind":"call"' not in line:
                continue
            p = json.loads(line).get("params", {})
            with self.lock:
                self.calls.append((t, p.get("call_id"), p.get("state")))

    def first(self, call_id, states, limit):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit:
            with self.lock:
                for t, c, st in self.calls:
                    if c == call_id and st in states:
                        return t
            time.sleep(0.002)
        return None


class Screen:
    def __init__(self, sock):
        self.sock = sock
        self.reads = 0

    def tmux(self, *args, check=False):
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, check=check)

    def text(self):
        self.reads += 1
        return self.tmux("capture-pane", "-p", "-t", "tui").stdout

    def until(self, ok, limit, what):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit:
            s = self.text()
            if ok(s):
                return time.perf_counter(), s
            time.sleep(0.002)
        sys.exit(f"timed out waiting for {what}; screen:\n{self.text()}")


def lamp_of(screen, ext):
    for line in screen.splitlines():
        words = line.split()
        if words[:1] == [ext]:
            for w in ("ringing", "talking", "held", "idle", "offline"):
                if w in words:
                    return w
    return None


def cpu_ms(pid):
    """CPU time (user + system, every thread) a process has used so far, ms; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def child_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def median(v):
    v = sorted(v)
    n = len(v)
    return (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--watchers", type=int, default=10000)
    ap.add_argument("--rows", type=int, required=True, help="rows the Lines view counts")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--snapshots", type=int, default=5)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--tmux-socket", required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--budget-s", type=float, default=900)
    ap.add_argument("--settle-s", type=float, default=0.0,
                    help="wait this long after the rows show before the call (the dashboard's start-up queries end)")
    args = ap.parse_args()
    deadline = time.monotonic() + args.budget_s

    load = Load(args)
    load.loop = asyncio.new_event_loop()
    threading.Thread(target=load.loop.run_forever, daemon=True).start()

    t0 = time.perf_counter()
    in_loop(load, load.open(), 120)
    regs = in_loop(load, load.bounded(load.register(10000 + i) for i in range(args.users)), 600)
    t1 = time.perf_counter()
    subs = in_loop(load, load.bounded(load.subscribe(i) for i in range(args.watchers)), 600)
    t2 = time.perf_counter()
    time.sleep(1.0)  # the last NOTIFYs
    status, _, _ = control(args.socket, "status")
    counts = status.get("result", {}).get("counts", {})
    subs_total = counts.get("subscriptions", {}).get("total")
    print(f"SETUP registered={regs}/{args.users} in {t1 - t0:.1f}s subscribed={subs}/{args.watchers} in "
          f"{t2 - t1:.1f}s notifies_answered={load.stats['notifies']} retransmitted={load.stats['retransmitted']} "
          f"server_bindings={counts.get('bindings')} server_subscriptions={subs_total}", flush=True)
    if regs < args.users or subs < args.watchers:
        sys.exit("set-up failed")

    snaps, cpus = [], []
    size = 0
    for _ in range(args.snapshots):
        before = cpu_ms(args.server_pid)
        v, took, size = control(args.socket, "follow", read_notification=True)
        cpus.append(cpu_ms(args.server_pid) - before)
        assert v.get("method") == "snapshot", str(v)[:200]
        snaps.append(took * 1000)
        time.sleep(0.2)
    print(f"SNAPSHOT bytes={size} ms={' '.join(f'{x:.0f}' for x in snaps)} median_ms={median(snaps):.0f} "
          f"server_cpu_ms={' '.join(f'{x:.0f}' for x in cpus)} median_cpu_ms={median(cpus):.0f}", flush=True)

    follower = Follower(args.socket)
    screen = Screen(args.tmux_socket)
    rows_text = f"of {args.rows}"
    env = {**os.environ, "TERM": "xterm-256color"}
    for r in range(1, args.rounds + 1):
        if time.monotonic() > deadline:
            sys.exit("budget spent")
        screen.tmux("kill-server")
        # The session first runs a placeholder, so the control client is attached before
        # the dashboard writes its first byte; the window keeps its 120x40 (manual size).
        subprocess.run(["tmux", "-L", args.tmux_socket, "-f", "/dev/null", "new-session", "-d", "-x", "120",
                        "-y", "40", "-s", "tui", "sleep 600", ";", "set", "-g", "window-size", "manual"],
                       check=True, env=env)
        out = Output(args.tmux_socket)
        start = time.perf_counter()
        screen.tmux("respawn-pane", "-k", "-t", "tui", f"{args.bin} tui --socket {args.socket}; sleep 60", check=True)
        # The control client's stamps first; then capture-pane confirms (polling it meanwhile
        # would cost this process the CPU and the lock its stamps need).
        shown = out.first(rows_text, start, 30)
        screen.until(lambda s: rows_text in s and lamp_of(s, "10000") == "idle", 10, "the rows")
        tui = child_of(int(screen.tmux("display", "-p", "-t", "tui", "#{pane_pid}").stdout.strip()))
        tui_cpu = cpu_ms(tui) if tui else None
        size = screen.tmux("display", "-p", "-t", "tui", "#{window_width}x#{window_height}").stdout.strip()
        if size != "120x40":
            sys.exit(f"the window is {size}, not 120x40")
        time.sleep(args.settle_s)
        call_id = f"tui-bench-{r}-{secrets.token_hex(4)}"
        load.ring_sent = None
        sent, final = in_loop(load, load.call(10001, 10000, call_id), 10)
        ringing = out.first("ringing", sent, 10)
        screen.until(lambda s: lamp_of(s, "10000") == "ringing", 10, "10000 ringing")
        callee = load.phones[10000]
        busy_at = [None]

        def hang_up():
            busy_at[0] = time.perf_counter()
            callee.busy()

        load.loop.call_soon_threadsafe(hang_up)
        for _ in range(1000):
            if busy_at[0] is not None:
                break
            time.sleep(0.001)
        idle = out.first("idle", busy_at[0], 10)
        screen.until(lambda s: lamp_of(s, "10000") == "idle", 10, "10000 idle")
        answer = in_loop(load, wait_for(final, 10), 15)
        if answer is None or answer.status != 486:
            sys.exit(f"the caller got {answer and answer.first!r}, not the 486")
        ring180 = (load.ring_sent - sent) * 1000 if load.ring_sent else float("nan")
        # The dashboard shows trying/proceeding/early alike as ringing.
        published = follower.first(call_id, ("trying", "proceeding", "early"), 5)
        pub_ms = (published - sent) * 1000 if published else float("nan")
        shown_after_pub = (ringing - published) * 1000 if published else float("nan")
        print(f"ROUND round={r} start_ms={(shown - start) * 1000:.0f} change_ms={(ringing - sent) * 1000:.1f} "
              f"end_ms={(idle - busy_at[0]) * 1000:.1f} invite_to_180_ms={ring180:.1f} "
              f"invite_to_published_ms={pub_ms:.1f} published_to_screen_ms={shown_after_pub:.1f} "
              f"tui_cpu_at_start_ms={tui_cpu if tui_cpu is not None else float('nan'):.0f}", flush=True)
        out.close()
        screen.tmux("kill-server")
        time.sleep(0.5)
    load.loop.call_soon_threadsafe(load.loop.stop)


if __name__ == "__main__":
    main()
