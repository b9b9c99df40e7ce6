#!/usr/bin/env python3
"""Shared-line (BLA) seize latency driver for tests/bench/bla.sh.

Plays L lines x P Polycom-like phones over UDP on loopback against one server
(busylamp, or Kamailio with pua_bla), one UDP socket per phone (a phone is
its contact's host:port, as the server sees it), and measures how long a
seize takes to reach the other phones of its line.

Set-up, per phone (all phones of all lines, a few at a time):
  REGISTER the line (Contact sip:LINE@127.0.0.1:PORT; digest MD5 with the
  line's credentials when challenged), then wait for the server's SUBSCRIBE
  (Event: dialog;sla) to that contact: answer 200 and NOTIFY the phone's
  full state (no dialog: idle); then SUBSCRIBE Event: dialog;sla for the
  line itself (Request-URI and Contact user = the line) and answer every
  NOTIFY 200.  Every phone keeps doing all of that for the whole run: a
  refreshing or new SUBSCRIBE from the server is answered 200 and followed
  by a full NOTIFY of what the phone holds then (RFC 6665 4.2.1.2).

Measurement, ROUNDS rounds (plus WARMUP rounds not counted), each P waves:
  in wave k, phone k of every line seizes a free appearance (k mod
  APPEARANCES): a state="partial" NOTIFY with one dialog in state trying
  (the real Polycom shape: version="0", <param pname="x-line-id" pval="N"/>
  on the local target, no local identity), lines one after another SPACING
  ms apart.  For each of the other P-1 phones of that line:
    seize latency = receipt of the first NOTIFY (to that phone's own
                    dialog;sla subscription) that shows the seize's dialog in
                    state trying - sending of the seize NOTIFY
  measured in this process (time.perf_counter_ns just before sendto and as
  the datagram is handed to the event loop: the driver's own socket and
  parsing time is in the figure, so it is pessimistic).  When every line's
  seize is seen by all (or WAIT_MS passed: those are "missing"), every
  seizing phone hangs up (--release partial: a partial NOTIFY with the
  dialog terminated, as a Polycom does; --release full: a full document
  without it), SPACING ms apart, and the
  wave ends when the other phones see the appearance free again (release
  latency, the same way) or WAIT_MS passed.
  Also counted: seizes not answered 200 (refused), NOTIFYs that show a
  phone its own seize (echo), NOTIFYs answered, NOTIFYs that show a phone
  the same live dialogs as its previous one (unchanged), server
  retransmissions.

Output (stdout): "SETUP ..." then one line per round
  ROUND round=R seizes=N expected=E seen=S missing=M p50_ms=.. p99_ms=..
        max_ms=.. release_p50_ms=.. release_p99_ms=.. answer_p50_ms=..
        refused=.. echoes=.. warmup=0|1
and "TOTAL ..." over the counted rounds.  Exit 1 if the set-up failed.

Usage: bla_seize.py --server 127.0.0.1:PORT [--domain example.test]
         [--lines 20] [--phones 4] [--appearances 2] [--rounds 5]
         [--warmup 1] [--spacing-ms 10] [--wait-ms 2000]
         [--line-prefix bl] [--password-prefix pw] [--budget-s 300]
         [--release partial|full] [--trace FILE]
  Line i (1-based) is user f"{prefix}{i:03d}", password f"pw{user}".
Loopback only; every wait is bounded (WAIT_MS per wave, BUDGET_S overall).
"""

import argparse
import asyncio
import gc
import hashlib
import re
import secrets
import sys
import time

sys.dont_write_bytecode = True

T1 = 0.5
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
           "l": "content-length", "c": "content-type", "o": "event", "k": "supported"}
DIALOG = re.compile(r"<dialog(?=[\s>])([^>]*)>(.*?)</dialog>", re.S)
ATTR_ID = re.compile(r"""\bid\s*=\s*["']([^"']*)["']""")
STATE = re.compile(r"<state\b[^>]*>\s*([a-z]+)\s*</state>")
LINE_ID = re.compile(r"""pname\s*=\s*["'](?:x-line-id|appearance)["']\s+pval(?:ue)?\s*=\s*["'](\d+)["']""")
URI_HOSTPORT = re.compile(r"sips?:(?:[^@>;\s]*@)?([^:;>\s]+)(?::(\d+))?")
TAG = re.compile(r";\s*tag=([^;>\s]+)")


def now_ns():
    return time.perf_counter_ns()


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def branch():
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag():
    return secrets.token_hex(6)


class Msg:
    """A parsed SIP message: first line, headers (lowercase names, lists), body."""

    def __init__(self, data):
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first = lines[0]
        self.headers = {}
        last = None
        for ln in lines[1:]:
            if ln[:1] in (" ", "\t") and last:
                self.headers[last][-1] += " " + ln.strip()
                continue
            name, sep, value = ln.partition(":")
            if not sep:
                continue
            name = name.strip().lower()
            name = COMPACT.get(name, name)
            self.headers.setdefault(name, []).append(value.strip())
            last = name
        self.body = body.decode("utf-8", "replace")
        parts = self.first.split(" ", 2)
        self.is_response = parts[0].startswith("SIP/")
        if self.is_response:
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.method = None
        else:
            self.method = parts[0]
            self.status = None
        cseq = self.h("cseq").split()
        self.cseq = int(cseq[0]) if cseq and cseq[0].isdigit() else -1
        self.cseq_method = cseq[1] if len(cseq) > 1 else ""

    def h(self, name, default=""):
        v = self.headers.get(name)
        return v[0] if v else default

    def all(self, name):
        return self.headers.get(name, [])


def digest_authorization(challenge, method, uri, user, password):
    """The Authorization value answering a Digest challenge (MD5, qop=auth if offered)."""
    params = {k.lower(): (a or b) for k, a, b in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', challenge)}
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    alg = params.get("algorithm", "MD5")
    if alg.upper() != "MD5":
        return None

    def md5(s):
        return hashlib.md5(s.encode()).hexdigest()

    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        nc, cnonce = "00000001", secrets.token_hex(8)
        resp = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        out += f', response="{resp}", qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        out += f', response="{md5(f"{ha1}:{nonce}:{ha2}")}"'
    if "opaque" in params:
        out += f', opaque="{params["opaque"]}"'
    return out


def dialogs_in(body):
    """[(id, state, appearance or None)] of a dialog-info body"""
    out = []
    for attrs, inner in DIALOG.findall(body):
        m = ATTR_ID.search(attrs)
        s = STATE.search(inner)
        ln = LINE_ID.search(inner)
        out.append((m.group(1) if m else "", s.group(1) if s else "", int(ln.group(1)) if ln else None))
    return out


class Phone(asyncio.DatagramProtocol):
    def __init__(self, drv, line, index):
        self.drv = drv
        self.line = line  # line user
        self.index = index
        self.transport = None
        self.port = 0
        self.pending = {}  # (call-id, cseq, method) -> future of the final response
        self.notifier = None  # our side of the server's dialog;sla subscription
        self.notifier_ready = asyncio.get_running_loop().create_future()
        self.watch = None  # our own dialog;sla subscription: call-id, tags
        self.held = None  # (dialog id, appearance, state) this phone shows, or None
        self.watch_ready = asyncio.get_running_loop().create_future()
        self.seen_notify_keys = set()
        self.last_shown = None
        self.name = f"{line}#{index}"

    # ---- transport
    def connection_made(self, transport):
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def contact(self):
        return f"<sip:{self.line}@127.0.0.1:{self.port}>"

    def send(self, data, addr=None):
        self.transport.sendto(data, addr or self.drv.server)

    def datagram_received(self, data, addr):
        t = now_ns()
        if not data.strip():
            return  # keep-alive
        try:
            msg = Msg(data)
        except Exception:  # noqa: BLE001 (a broken datagram is counted, never fatal)
            self.drv.stats["bad"] += 1
            return
        if msg.is_response:
            key = (msg.h("call-id"), msg.cseq, msg.cseq_method)
            fut = self.pending.get(key)
            if fut and not fut.done() and msg.status >= 200:
                fut.set_result((msg, t))
            return
        if msg.method == "NOTIFY":
            self.on_notify(msg, addr, t)
        elif msg.method == "SUBSCRIBE":
            self.on_subscribe(msg, addr)
        elif msg.method in ("OPTIONS",):
            self.reply(msg, addr, 200, "OK")
        elif msg.method != "ACK":
            self.reply(msg, addr, 405, "Method Not Allowed")

    def reply(self, req, addr, code, reason, to_tag=None, extra=()):
        to = req.h("to")
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in req.all("via")]
        lines += [f"From: {req.h('from')}", f"To: {to}", f"Call-ID: {req.h('call-id')}", f"CSeq: {req.h('cseq')}"]
        lines += list(extra)
        lines += ["Content-Length: 0", "", ""]
        self.send("\r\n".join(lines).encode(), addr)

    # ---- client transactions
    async def request(self, build, timeout=32.0, on_send=None):
        """build = (bytes, call-id, cseq, method); retransmits (T1 doubling, at
        most 4 s apart) until a final response or timeout; (Msg, t_answer_ns,
        t_sent_ns) or None.  on_send(t_ns) runs right before the first sendto."""
        data, cid, cseq, method = build
        key = (cid, cseq, method)
        fut = asyncio.get_running_loop().create_future()
        self.pending[key] = fut
        t_sent = now_ns()
        if on_send:
            on_send(t_sent)
        self.send(data)
        interval, waited = T1, 0.0
        try:
            while waited < timeout:
                try:
                    msg, t = await asyncio.wait_for(asyncio.shield(fut), interval)
                    return msg, t, t_sent
                except asyncio.TimeoutError:
                    waited += interval
                    interval = min(interval * 2, 4.0)
                    self.drv.stats["client_retrans"] += 1
                    self.send(data)
            return None
        finally:
            self.pending.pop(key, None)

    # ---- REGISTER
    async def register(self):
        cid = f"reg-{secrets.token_hex(6)}@127.0.0.1"
        tag = new_tag()
        auth = None
        for cseq in (1, 2):
            hdrs = [f"REGISTER sip:{self.drv.domain} SIP/2.0",
                    f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch()};rport",
                    "Max-Forwards: 70",
                    f"From: <sip:{self.line}@{self.drv.domain}>;tag={tag}",
                    f"To: <sip:{self.line}@{self.drv.domain}>",
                    f"Call-ID: {cid}", f"CSeq: {cseq} REGISTER",
                    f"Contact: {self.contact()}", "Expires: 3600", f"User-Agent: {self.drv.ua}"]
            if auth:
                hdrs.append(f"Authorization: {auth}")
            data = "\r\n".join(hdrs + ["Content-Length: 0", "", ""]).encode()
            r = await self.request((data, cid, cseq, "REGISTER"))
            if r is None:
                raise RuntimeError(f"{self.name}: REGISTER timed out")
            msg = r[0]
            if msg.status == 200:
                return
            if msg.status in (401, 407) and auth is None:
                ch = msg.h("www-authenticate") or msg.h("proxy-authenticate")
                auth = digest_authorization(ch, "REGISTER", f"sip:{self.drv.domain}", self.line, self.drv.password(self.line))
                if auth:
                    continue
            raise RuntimeError(f"{self.name}: REGISTER -> {msg.first}")

    # ---- the server's subscription to us (we are the notifier)
    def on_subscribe(self, msg, addr):
        m = re.search(r"(?i)^\s*dialog\s*;\s*sla", msg.h("event"))
        if not m:
            self.reply(msg, addr, 489, "Bad Event")
            return
        expires = int(msg.h("expires", "3600") or 3600)
        n = self.notifier
        to_has_tag = ";tag=" in msg.h("to")
        if n is not None and to_has_tag and n["call_id"] == msg.h("call-id"):
            pass  # refresh of the current subscription
        elif to_has_tag:
            self.reply(msg, addr, 481, "Subscription Does Not Exist")
            return
        else:
            if n is not None:
                self.drv.stats["resubscribed"] += 1
            target = msg.h("contact")
            mt = URI_HOSTPORT.search(target)
            dest = (mt.group(1), int(mt.group(2) or 5060)) if mt else addr
            uri = re.search(r"<([^>]+)>", target)
            n = self.notifier = {
                "call_id": msg.h("call-id"), "local_tag": new_tag(), "remote": msg.h("from"),
                "local_uri": re.sub(r";\s*tag=[^;>\s]*", "", msg.h("to")),
                "target": uri.group(1) if uri else target.strip(), "dest": dest, "cseq": 0}
        self.reply(msg, addr, 200, "OK", to_tag=n["local_tag"],
                   extra=(f"Contact: {self.contact()}", f"Expires: {expires}"))
        if expires == 0:
            self.notifier = None
            asyncio.ensure_future(self.notify_state(n, "terminated", 0))
            return
        n["expires"] = expires
        asyncio.ensure_future(self.notify_state(n, "full", expires, first=not self.notifier_ready.done()))

    def dialog_xml(self, did, appearance, state):
        return (f'<dialog id="{did}" call-id="{did}@127.0.0.1" local-tag="{did}" direction="initiator">\r\n'
                f"<state>{state}</state>\r\n<local>\r\n"
                f'<target uri="sip:{self.line}@{self.drv.domain}">\r\n'
                f'<param pname="x-line-id" pval="{appearance}" />\r\n</target>\r\n</local>\r\n</dialog>\r\n')

    def build_notify(self, n, doc_state, body_dialogs, sub_state):
        n["cseq"] += 1
        body = ('<?xml version="1.0"?>\r\n'
                '<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" '
                f'state="{doc_state}" entity="sip:{self.line}@{self.drv.domain}">\r\n'
                + body_dialogs + "</dialog-info>\r\n")
        hdrs = [f"NOTIFY {n['target']} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch()};rport",
                "Max-Forwards: 70",
                f"From: {n['local_uri']};tag={n['local_tag']}", f"To: {n['remote']}",
                f"Call-ID: {n['call_id']}", f"CSeq: {n['cseq']} NOTIFY",
                f"Contact: {self.contact()}", "Event: dialog;sla",
                f"Subscription-State: {sub_state}", f"User-Agent: {self.drv.ua}",
                "Content-Type: application/dialog-info+xml", f"Content-Length: {len(body.encode())}", "", body]
        return "\r\n".join(hdrs).encode(), n["call_id"], n["cseq"], "NOTIFY"

    async def notify_state(self, n, doc_state, expires, first=False):
        body = ""
        if self.held is not None:
            body = self.dialog_xml(*self.held)
        sub_state = "terminated;reason=timeout" if doc_state == "terminated" else f"active;expires={expires}"
        r = await self.request(self.build_notify(n, "full", body, sub_state), timeout=8.0)
        if first and not self.notifier_ready.done():
            if r is not None and r[0].status == 200:
                self.notifier_ready.set_result(True)
            else:
                self.notifier_ready.set_exception(RuntimeError(
                    f"{self.name}: full NOTIFY -> {r[0].first if r else 'timeout'}"))

    async def send_seize(self, did, appearance, state, on_send=None):
        """partial NOTIFY with one dialog; (status, t_sent_ns, t_answer_ns)"""
        n = self.notifier
        if n is None:
            return None
        self.held = (did, appearance, state) if state != "terminated" else None
        if state == "terminated" and self.drv.a.release == "full":
            # hang up as a full document without the dialog
            doc, body = "full", ""
        else:
            doc, body = "partial", self.dialog_xml(did, appearance, state)
        data = self.build_notify(n, doc, body, f"active;expires={n.get('expires', 3600)}")
        r = await self.request(data, timeout=8.0, on_send=on_send)
        if r is None:
            return (0, None, None)
        msg, t, t_sent = r
        if msg.status != 200 and state != "terminated":
            self.held = None  # refused: the phone goes back on-hook
        return (msg.status, t_sent, t)

    # ---- our own subscription to the line (we are a watcher)
    async def subscribe_line(self):
        cid = f"sla-{secrets.token_hex(6)}@127.0.0.1"
        tag = new_tag()
        self.watch = {"call_id": cid, "tag": tag}
        auth = None
        uri = f"sip:{self.line}@{self.drv.domain}"
        for cseq in (1, 2):
            hdrs = [f"SUBSCRIBE {uri} SIP/2.0",
                    f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch()};rport",
                    "Max-Forwards: 70",
                    f"From: <sip:{self.line}@{self.drv.domain}>;tag={tag}", f"To: <{uri}>",
                    f"Call-ID: {cid}", f"CSeq: {cseq} SUBSCRIBE", f"Contact: {self.contact()}",
                    "Event: dialog;sla", "Accept: application/dialog-info+xml", "Expires: 3600",
                    f"User-Agent: {self.drv.ua}"]
            if auth:
                hdrs.append(f"Authorization: {auth}")
            data = "\r\n".join(hdrs + ["Content-Length: 0", "", ""]).encode()
            r = await self.request((data, cid, cseq, "SUBSCRIBE"))
            if r is None:
                raise RuntimeError(f"{self.name}: SUBSCRIBE timed out")
            msg = r[0]
            if msg.status in (200, 202):
                return
            if msg.status in (401, 407) and auth is None:
                ch = msg.h("www-authenticate") or msg.h("proxy-authenticate")
                auth = digest_authorization(ch, "SUBSCRIBE", uri, self.line, self.drv.password(self.line))
                if auth:
                    continue
            raise RuntimeError(f"{self.name}: SUBSCRIBE -> {msg.first}")

    def on_notify(self, msg, addr, t):
        self.reply(msg, addr, 200, "OK")
        key = (msg.h("call-id"), msg.cseq)
        if key in self.seen_notify_keys:
            self.drv.stats["server_retrans"] += 1
            return
        self.seen_notify_keys.add(key)
        if self.watch is None or msg.h("call-id") != self.watch["call_id"]:
            self.drv.stats["stray_notify"] += 1
            return
        self.drv.stats["notifies"] += 1
        if not self.watch_ready.done():
            self.watch_ready.set_result(True)
        dialogs = dialogs_in(msg.body)
        # the live dialogs shown, to count NOTIFYs that show this phone nothing new
        shown = frozenset((d, st, ap) for d, st, ap in dialogs if st and st != "terminated")
        if shown == self.last_shown:
            self.drv.stats["unchanged"] += 1
        self.last_shown = shown
        if self.drv.trace:
            self.drv.trace.write(f"{t / 1e6:.3f} {self.name} CSeq {msg.cseq} "
                                 f"{' '.join(f'{d}={st}@{ap}' for d, st, ap in dialogs) or '-'}\n")
        self.drv.observe(self, dialogs, t)


class Driver:
    def __init__(self, a):
        self.a = a
        host, _, port = a.server.rpartition(":")
        self.server = (host, int(port))
        self.domain = a.domain
        self.ua = a.ua
        self.lines = {}  # line user -> [Phone]
        self.stats = dict(bad=0, client_retrans=0, server_retrans=0, stray_notify=0,
                          notifies=0, unchanged=0, resubscribed=0)
        # watches: (watcher phone, dialog id, kind) -> t0 ns; kind "seize": wait for
        # state trying shown; "release": wait for it gone
        self.waiting = {}
        self.samples = {"seize": [], "release": []}
        self.echoes = 0
        self.trace = open(a.trace, "w") if a.trace else None

    def password(self, user):
        return f"{self.a.password_prefix}{user}"

    def observe(self, phone, dialogs, t):
        live = {d: (st, ap) for d, st, ap in dialogs if st and st != "terminated"}
        # a phone shown its own dialog as someone else's (busylamp matches the
        # watcher to the phone by its contact; Kamailio by the Sender header)
        self.echoes += sum(1 for d in live if phone.name_tag in d)
        if not self.waiting:
            return
        done = []
        for (w, did, kind), t0 in self.waiting.items():
            if w is not phone:
                continue
            shown = any(did in d and st == "trying" for d, (st, _ap) in live.items())
            if (kind == "seize" and shown) or (kind == "release" and not any(did in d for d in live)):
                self.samples[kind].append((t - t0) / 1e6)
                done.append((w, did, kind))
        for k in done:
            del self.waiting[k]

    async def setup(self):
        loop = asyncio.get_running_loop()
        for i in range(1, self.a.lines + 1):
            user = f"{self.a.line_prefix}{i:03d}"
            phones = []
            for k in range(self.a.phones):
                _t, p = await loop.create_datagram_endpoint(lambda u=user, k=k: Phone(self, u, k),
                                                            local_addr=("127.0.0.1", 0))
                p.name_tag = f"-{user}-{k}-"
                phones.append(p)
            self.lines[user] = phones
        every = [p for ps in self.lines.values() for p in ps]
        sem = asyncio.Semaphore(8)

        async def one(p):
            async with sem:
                await p.register()
                await asyncio.wait_for(p.notifier_ready, 10)
                await p.subscribe_line()
                await asyncio.wait_for(p.watch_ready, 10)

        t0 = time.monotonic()
        await asyncio.gather(*(one(p) for p in every))
        print(f"SETUP phones={len(every)} lines={len(self.lines)} seconds={time.monotonic() - t0:.2f}", flush=True)

    async def wave(self, rnd, k):
        """phone k of every line seizes, then hangs up; -> (seizes, refused, answers_ms)"""
        sp = self.a.spacing_ms / 1000.0
        ap = k % self.a.appearances
        answers, refused, sent = [], 0, []
        tasks = []

        async def seize(user, p, did):
            others = [o for o in self.lines[user] if o is not p]

            def start(t):
                for o in others:
                    self.waiting[(o, did, "seize")] = t

            r = await p.send_seize(did, ap, "trying", on_send=start)
            if r is None or r[0] != 200:
                for o in others:  # refused: nobody is to be shown it
                    self.waiting.pop((o, did, "seize"), None)
                return (r[0] if r else 0), None
            st, t_sent, t_ans = r
            return st, (t_ans - t_sent) / 1e6

        for user, phones in self.lines.items():
            p = phones[k]
            did = f"seize{p.name_tag}r{rnd}"
            sent.append((user, p, did))
            tasks.append(asyncio.ensure_future(seize(user, p, did)))
            await asyncio.sleep(sp)
        for st, ms in await asyncio.gather(*tasks):
            if st != 200:
                refused += 1
            elif ms is not None:
                answers.append(ms)
        await self.drain(lambda key: key[2] == "seize")
        rel = []
        for user, p, did in sent:
            if p.held is None:
                continue
            rel.append(asyncio.ensure_future(p.send_seize(
                did, ap, "terminated",
                on_send=lambda t, user=user, p=p, did=did: self.waiting.update(
                    {(o, did, "release"): t for o in self.lines[user] if o is not p}))))
            await asyncio.sleep(sp)
        await asyncio.gather(*rel)
        await self.drain(lambda key: key[2] == "release")
        return len(sent), refused, answers

    async def drain(self, which):
        deadline = time.monotonic() + self.a.wait_ms / 1000.0
        while any(which(k) for k in self.waiting) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        missing = [k for k in self.waiting if which(k)]
        for k in missing:
            del self.waiting[k]
            self.missing[k[2]] += 1

    async def run(self):
        await self.setup()
        # no garbage-collector pauses inside the measurement (a bounded run:
        # what it allocates meanwhile is small)
        gc.collect()
        gc.disable()
        t_end = time.monotonic() + self.a.budget_s
        tot = {"seize": [], "release": [], "answers": [], "refused": 0, "seizes": 0, "missing": 0, "echoes": 0}
        for rnd in range(1, self.a.warmup + self.a.rounds + 1):
            if time.monotonic() > t_end:
                print(f"BUDGET exhausted before round {rnd}", flush=True)
                break
            warm = rnd <= self.a.warmup
            self.samples = {"seize": [], "release": []}
            self.missing = {"seize": 0, "release": 0}
            echo0 = self.echoes
            seizes, refused, answers = 0, 0, []
            for k in range(self.a.phones):
                n, r, ans = await self.wave(rnd, k)
                seizes += n
                refused += r
                answers += ans
            s = sorted(self.samples["seize"])
            rl = sorted(self.samples["release"])
            answers.sort()
            expected = (seizes - refused) * (self.a.phones - 1)
            print(f"ROUND round={rnd} seizes={seizes} expected={expected} seen={len(s)} "
                  f"missing={self.missing['seize']} p50_ms={fmt(pct(s, 50))} p99_ms={fmt(pct(s, 99))} "
                  f"max_ms={fmt(s[-1] if s else None)} release_p50_ms={fmt(pct(rl, 50))} "
                  f"release_p99_ms={fmt(pct(rl, 99))} release_missing={self.missing['release']} "
                  f"answer_p50_ms={fmt(pct(answers, 50))} answer_p99_ms={fmt(pct(answers, 99))} "
                  f"refused={refused} echoes={self.echoes - echo0} warmup={int(warm)}", flush=True)
            if not warm:
                tot["seize"] += s
                tot["release"] += rl
                tot["answers"] += answers
                tot["refused"] += refused
                tot["seizes"] += seizes
                tot["missing"] += self.missing["seize"]
                tot["echoes"] += self.echoes - echo0
        gc.enable()
        for p in (p for ps in self.lines.values() for p in ps):
            p.transport.close()
        s = sorted(tot["seize"])
        print(f"TOTAL seizes={tot['seizes']} seen={len(s)} missing={tot['missing']} "
              f"p50_ms={fmt(pct(s, 50))} p99_ms={fmt(pct(s, 99))} max_ms={fmt(s[-1] if s else None)} "
              f"refused={tot['refused']} echoes={tot['echoes']} "
              + " ".join(f"{k}={v}" for k, v in self.stats.items()), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--domain", default="example.test")
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--phones", type=int, default=4)
    ap.add_argument("--appearances", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--spacing-ms", type=float, default=10.0)
    ap.add_argument("--wait-ms", type=float, default=2000.0)
    ap.add_argument("--line-prefix", default="bl")
    ap.add_argument("--password-prefix", default="pw")
    ap.add_argument("--ua", default="PolycomVVX-VVX_410-UA/5.9.5.0614 (busylamp-bench)")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--trace", help="write every NOTIFY a phone's subscription receives to this file")
    ap.add_argument("--release", choices=("partial", "full"), default="partial",
                    help="hang up with a partial NOTIFY showing the dialog terminated (Polycom), "
                    "or with a full document without it")
    a = ap.parse_args()
    if not (1 <= a.lines <= 500 and 2 <= a.phones <= 16 and 1 <= a.rounds <= 100):
        raise SystemExit("lines 1..500, phones 2..16, rounds 1..100")
    drv = Driver(a)
    try:
        asyncio.run(asyncio.wait_for(drv.run(), a.budget_s + 120))
    except (RuntimeError, asyncio.TimeoutError) as e:
        print(f"FAILED {e}", flush=True)
        sys.exit(1)
    finally:
        if drv.trace:
            drv.trace.close()


if __name__ == "__main__":
    main()
