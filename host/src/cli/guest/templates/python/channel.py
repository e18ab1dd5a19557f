"""A stategate channel provider in Python (world `channel-provider`,
wit/channel.wit): the broadcast between gateway instances. The gateway
publishes every event to it and polls it from an opaque cursor every few
milliseconds, filtering by topic itself.

This one keeps events in the instance's memory, so it serves one gateway
only: a starting point. A real channel talks to a broker through
`grants.net` or `grants.http`. Check it with `stategate guest check <file.wasm>`.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.channel import Batch
from wit_world.imports.types import ProviderError_Internal

# The number of the first event held, and the events not yet polled past.
first = 0
held = []


class Channel(exports.Channel):
    def publish(self, event):
        held.append(event)

    def tail(self):
        return str(first + len(held))

    def poll(self, cursor, limit):
        global first
        try:
            at = int(cursor)
        except ValueError:
            raise Err(ProviderError_Internal(f"not a cursor: {cursor!r}"))
        # Forget what the host has polled past (its cursor only moves forward).
        done = min(max(at - first, 0), len(held))
        del held[:done]
        first += done
        events = held[:limit]
        return Batch(events=events, cursor=str(first + len(events)))

    def ping(self):
        pass

    def max_instances(self):
        return 1  # the events live in this instance's memory
