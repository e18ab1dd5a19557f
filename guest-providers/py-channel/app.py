"""A stategate channel provider in Python (componentize-py, world
`channel-provider`): `dir-channel` written again in a second language, over
the same directory format, so the two interoperate.

The granted directory (`grants.dir`, preopened at /data) holds one
append-only log of JSON lines per publishing instance (`<random id>.log`);
readers poll every `*.log` file from a cursor, a JSON object of byte offsets
by file name. Gateways that grant the same directory see each other's
events, whichever of the two guests they run. A line is appended with one
write and a reader consumes only whole lines, so a line being written is
picked up by the next poll. Files are never compacted.
"""

import json
import os

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.channel import Batch
from wit_world.imports import host
from wit_world.imports.types import (
    Event,
    EventKind,
    ProviderError_Internal,
    ProviderError_Unavailable,
    RecordRef,
)

DIR = "/data"
# Bytes read from one file per poll.
CHUNK = 1 << 20

KINDS = {EventKind.SET: "SET", EventKind.EDIT: "EDIT", EventKind.DEL: "DEL", EventKind.REVERT: "REVERT"}
KIND_OF = {name: kind for kind, name in KINDS.items()}

# This instance's own log, opened on its first publish.
out = None


def unavailable(what):
    return Err(ProviderError_Unavailable(str(what)))


def logs():
    """Every log file in the directory and its length."""
    try:
        names = [n for n in os.listdir(DIR) if n.endswith(".log")]
        return {n: os.stat(f"{DIR}/{n}").st_size for n in sorted(names)}
    except OSError as e:
        raise unavailable(f"cannot list {DIR} (is grants.dir set?): {e}")


def to_line(e):
    line = {
        "id": e.id,
        "seq": e.seq,
        "domain": e.record.domain,
        "ty": e.record.ty,
        "key": e.record.key,
        "claims": e.claims,
        "time": e.time,
        "version": e.version,
        "kind": KINDS[e.kind],
        "method": e.method,
    }
    if e.values is not None:
        line["values"] = e.values
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def to_event(line):
    return Event(
        id=line["id"],
        seq=line["seq"],
        record=RecordRef(domain=line["domain"], ty=line["ty"], key=line["key"]),
        values=line.get("values"),
        claims=line["claims"],
        time=line["time"],
        version=line["version"],
        kind=KIND_OF.get(line["kind"], EventKind.SET),
        method=line["method"],
    )


class Channel(exports.Channel):
    def publish(self, event):
        global out
        data = to_line(event)
        if out is None:
            path = f"{DIR}/{os.urandom(8).hex()}.log"
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as e:
                raise unavailable(f"cannot create {path} (is grants.dir set?): {e}")
        try:
            # One write per line: readers only consume complete lines.
            written = os.write(out, data)
            while written < len(data):
                written += os.write(out, data[written:])
        except OSError as e:
            os.close(out)
            out = None
            raise unavailable(f"cannot append to the channel log: {e}")

    def tail(self):
        return json.dumps(logs())

    def poll(self, cursor, limit):
        try:
            pos = json.loads(cursor) if cursor else {}
            if not isinstance(pos, dict):
                pos = {}
        except ValueError:
            pos = {}
        events = []
        for name, size in logs().items():
            at = pos.get(name, 0)
            if size <= at or len(events) >= limit:
                continue
            try:
                with open(f"{DIR}/{name}", "rb") as f:
                    f.seek(at)
                    buf = f.read(min(size - at, CHUNK))
            except OSError as e:
                raise unavailable(e)
            used = 0
            while len(events) < limit:
                end = buf.find(b"\n", used)
                if end < 0:
                    break  # a partial line: the writer is still at it
                raw, used = buf[used : end + 1], end + 1
                try:
                    events.append(to_event(json.loads(raw)))
                except (ValueError, KeyError, TypeError) as e:
                    host.log(host.Level.WARN, f"{name}: skipping a bad line: {e}")
            pos[name] = at + used
        return Batch(events=events, cursor=json.dumps(pos))

    def ping(self):
        logs()

    def max_instances(self):
        # One instance: a publisher's events stay in one file, in order.
        return 1
