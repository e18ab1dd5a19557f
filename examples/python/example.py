"""stategate from Python with grpcio.

Generate the client from proto/ once (grpcio-tools), then run:

    python3 -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/stategate.proto proto/google/api/annotations.proto proto/google/api/http.proto
    PYTHONPATH=gen python3 examples/python/example.py --addr 127.0.0.1:8080 --domain users

It follows the live events of <domain>/user in a background thread, writes
two records, reads and searches them, deletes one, and prints what it saw.
Set STATEGATE_TOKEN to send a bearer token. Against a gateway with
authentication on, a request policy must allow the calls (deny by
default), e.g. STATEGATE_REQUEST_POLICY_PATH=examples/policies/read_only_role.rego
and a token whose `roles` claim holds "writer".
"""

import argparse
import json
import os
import queue
import sys
import threading
import time

import grpc
from google.protobuf import json_format, struct_pb2

import stategate_pb2 as pb
import stategate_pb2_grpc as rpc


def metadata():
    token = os.environ.get("STATEGATE_TOKEN")
    return [("authorization", f"Bearer {token}")] if token else []


def values(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8080")
    ap.add_argument("--domain", default="example")
    args = ap.parse_args()
    d = args.domain

    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    state = rpc.StateServiceStub(channel)
    events = rpc.EventServiceStub(channel)

    # Follow events from now on: from_time makes the gateway replay anything
    # written after this instant, so nothing is missed even if our writes
    # overtake the stream's start.
    seen = queue.Queue()
    stream = events.Stream(pb.StreamOpts(domain=d, type="user", from_time=time.time_ns()), metadata=metadata())

    def follow():
        try:
            for ev in stream:
                seen.put(ev)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                seen.put(e)

    threading.Thread(target=follow, daemon=True).start()

    ev = state.Set(pb.State(domain=d, type="user", key="alice",
                            values=values({"name": "Alice", "city": "Paris"})), metadata=metadata())
    print(f"set alice: version {ev.version}")
    state.Set(pb.State(domain=d, type="user", key="bob",
                       values=values({"name": "Bob", "city": "Lyon"})), metadata=metadata())

    got = state.Get(pb.StateRef(domain=d, type="user", key="alice"), metadata=metadata())
    print("get alice:", json.dumps(json_format.MessageToDict(got.values), sort_keys=True))

    found = state.Search(pb.SearchStateOpts(domain=d, type="user",
                                            query_string=json.dumps({"city": "Paris"}), limit=10),
                         metadata=metadata())
    print("search city=Paris:", [s.key for s in found.state_values])

    state.Del(pb.StateRef(domain=d, type="user", key="bob"), metadata=metadata())
    try:
        state.Get(pb.StateRef(domain=d, type="user", key="bob"), metadata=metadata())
        sys.exit("bob should be gone")
    except grpc.RpcError as e:
        print("get bob:", e.code().name)

    history = events.Search(pb.SearchEventOpts(domain=d, type="user", limit=10), metadata=metadata())
    print("history:", [f"{e.state.key}:{pb.EventKind.Name(e.kind)}" for e in history.events])

    # The three writes arrive on the stream, in order.
    for _ in range(3):
        item = seen.get(timeout=30)
        if isinstance(item, Exception):
            raise item
        print(f"streamed: {item.state.key} {pb.EventKind.Name(item.kind)} v{item.version}")
    stream.cancel()
    channel.close()


if __name__ == "__main__":
    main()
