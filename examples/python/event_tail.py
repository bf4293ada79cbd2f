#!/usr/bin/env python3
"""event_tail.py: replay and follow nodemaint's event stream, one line per event.

The Python twin of examples/event-tail (Rust). It reads the events through the
coordinator's `event.read` API: a protobuf `ApiRequest` sent as a NATS request
to `<prefix>.v1.api.<user>.read.event.read`, answered with an `ApiReply`
holding a page of stored events (each an encoded `Event`) into the caller's
own inbox `_INBOX.<user>.…`, so a read-only (Level1) user needs no JetStream
permissions.

Needs nats-py and protobuf, and the classes generated from proto/ (see
examples/README.md):

    python3 -m grpc_tools.protoc -I proto/proto --python_out=examples/python/gen \
        proto/proto/nodemaint/v1/*.proto
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import ssl
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import nats  # noqa: E402
from nodemaint.v1 import api_pb2, events_pb2  # noqa: E402

KINDS = ["heartbeat", "inventory", "progress", "result", "checks", "job", "error"]


def duration_ms(s):
    m = re.fullmatch(r"(\d+)([smhd]?)", s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {s!r}: use 90s, 10m, 2h, 1d")
    n, unit = int(m.group(1)), m.group(2) or "s"
    ms = n * {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[unit]
    if ms > 3650 * 86_400_000:
        raise argparse.ArgumentTypeError(f"duration {s!r} is more than 3650 days")
    return ms


def utc(ms):
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def line(seq, ev):
    """One line: sequence, time, node, kind, operation, details."""
    kind = ev.WhichOneof("body") or "empty"
    b = getattr(ev, kind) if kind != "empty" else None
    if kind == "heartbeat":
        detail = f"boot={b.boot_id} agent={b.agent_version}"
    elif kind == "inventory":
        detail = f"generation={b.generation} domains={len(b.domains)}"
    elif kind == "progress":
        detail = f"vm={b.vm} step={b.step} {b.percent:.0f}% {b.bytes_processed} bytes"
    elif kind == "result":
        msg = b.error.message if b.HasField("error") else b.message
        detail = f"cmd={b.command_id} ok={str(b.ok).lower()} vm={b.vm} {msg}"
    elif kind == "checks":
        failed = ",".join(s.service for s in b.services if not s.ok)
        detail = f"all_ok={str(b.all_ok).lower()} failed=[{failed}]"
    elif kind == "job":
        detail = f"job={b.job_id} kind={b.kind} state={b.state}"
        if b.vm:
            detail += f" vm={b.vm}"
        if b.from_node or b.to_node:
            detail += f" {b.from_node}->{b.to_node}"
        if b.terminal:
            detail += f" terminal ok={str(b.ok).lower()}"
        if b.message:
            detail += " " + json.dumps(b.message, ensure_ascii=False)
    elif kind == "error":
        detail = f"subject={b.subject} {b.error.message}"
    else:
        detail = ""
    return f"{seq} {utc(ev.ts_ms)} {ev.node} {kind} op={ev.op_id or '-'} {detail}"


async def run(a):
    opts = {
        "servers": a.url.split(","),
        # Replies come to `_INBOX.<user>.…`, the only inbox the coordinator answers.
        "inbox_prefix": f"_INBOX.{a.user}",
    }
    if a.creds:
        opts["user_credentials"] = a.creds
    if a.nkey_seed:
        opts["nkeys_seed"] = a.nkey_seed
    if a.ca:
        opts["tls"] = ssl.create_default_context(cafile=a.ca)
    nc = await nats.connect(**opts)
    subject = f"{a.prefix}.v1.api.{a.user}.read.event.read"
    req = api_pb2.ReadEvents(since_ms=a.since_ms, op_id=a.op, wait_ms=5000 if a.follow else 0)
    req.filters.add(node=a.node, kind=a.kind)
    try:
        while True:
            body = api_pb2.ApiRequest(user=a.user, read_events=req).SerializeToString()
            msg = await nc.request(subject, body, timeout=30)
            reply = api_pb2.ApiReply.FromString(msg.data)
            which = reply.WhichOneof("kind")
            if which == "error":
                sys.exit(f"error: refused: {reply.error.message}")
            if which != "events":
                sys.exit(f"error: unexpected reply {which}")
            page = reply.events
            # Continue after this page, also when it was empty.
            req.start_seq = page.next_seq
            for stored in page.events:
                try:
                    ev = events_pb2.Event.FromString(stored.event)
                except Exception as e:  # a malformed event is reported, not fatal
                    print(f"seq {stored.seq}: {e}", file=sys.stderr)
                    continue
                print(line(stored.seq, ev), flush=True)
            if page.pending == 0 and not a.follow:
                return
    finally:
        await nc.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("NATS_URL") or "nats://127.0.0.1:4222")
    p.add_argument("--user", default=os.environ.get("USER"), help="the API caller (default $USER)")
    p.add_argument("--prefix", default="nodemaint")
    p.add_argument("--creds", help="a standard NATS .creds file (user JWT and seed)")
    p.add_argument("--nkey-seed", help="a file holding the user's nkey seed (SU…)")
    p.add_argument("--ca", help="CA certificate of the NATS server's TLS")
    since = p.add_mutually_exclusive_group()
    since.add_argument("--since", type=duration_ms, help="replay from this long ago (90s, 10m, 2h, 1d)")
    since.add_argument("--since-ms", type=int, help="replay from this time (ms since the epoch)")
    p.add_argument("--node", default="", help="only this node's events")
    p.add_argument("--kind", default="", choices=[""] + KINDS, help="only events of this kind")
    p.add_argument("--op", default="", help="only the events of this job")
    p.add_argument("--follow", "-f", action="store_true", help="wait for new events")
    a = p.parse_args()
    if not a.user:
        p.error("--user is required (or $USER)")
    a.since_ms = a.since_ms or 0
    if a.since is not None:
        now = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)
        a.since_ms = max(now - a.since, 1)
    try:
        asyncio.run(run(a))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
