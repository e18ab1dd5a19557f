"""A policy hook in Python (componentize-py): makes a tenant read-only.

Writes (Set, Edit, Del, Revert) are denied unless the token's `role` claim
is in config `writers` (comma-separated, default "admin"; "*" = anyone); reads pass, and
responses are returned unchanged except the fields in config `hide`.
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

WRITES = ("/Set", "/Edit", "/Del", "/Revert")


class Policy(exports.Policy):
    def authorize_request(self, input: str):
        doc = json.loads(input)
        method = doc.get("method", "")
        if not (method.startswith("/stategate.StateService/") and method.endswith(WRITES)):
            return Decision_Allow()
        writers = (host.config("writers") or "admin").split(",")
        role = (doc.get("claims") or {}).get("role")
        if "*" in writers or role in writers:
            return Decision_Allow()
        return Decision_Deny(f"domain {doc.get('body', {}).get('domain')!r} is read-only (python policy)")

    def authorize_response(self, input: str):
        hide = [f for f in (host.config("hide") or "").split(",") if f]
        if hide:
            return ResponseDecision_Redact(hide)
        return ResponseDecision_Allow()
