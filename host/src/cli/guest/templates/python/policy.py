"""A stategate policy hook in Python (world `policy-hook`, wit/policy.wit).

The gateway calls it after its Rego policies with the policy input as JSON:
{"claims", "method", "metadata", "body", "client_stream", "server_stream"}
and, on responses, "response". This one allows everything except requests
for the record key in config `forbidden_key` (default "forbidden"), and
removes the field config `redact` (if set) from returned values.
Check it with `stategate guest check <file.wasm>`.
"""

import json

from wit_world import exports
from wit_world.exports.policy import (
    Decision_Allow,
    Decision_Deny,
    ResponseDecision_Allow,
    ResponseDecision_Redact,
)
from wit_world.imports import host


class Policy(exports.Policy):
    def authorize_request(self, input: str):
        try:
            doc = json.loads(input)
        except ValueError as e:
            return Decision_Deny(f"unreadable policy input: {e}")  # fail closed
        forbidden = host.config("forbidden_key") or "forbidden"
        key = (doc.get("body") or {}).get("key")
        if key == forbidden:
            return Decision_Deny(f"key {key!r} is forbidden")
        return Decision_Allow()

    def authorize_response(self, input: str):
        field = host.config("redact")
        if field:
            return ResponseDecision_Redact([field])
        return ResponseDecision_Allow()
