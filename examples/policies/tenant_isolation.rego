# Tenant isolation: a caller only reaches the domains listed in its token's
# `domains` claim. Use the same module as the request policy and as the
# response policy:
#
#   STATEGATE_REQUEST_POLICY_PATH=examples/policies/tenant_isolation.rego
#   STATEGATE_RESPONSE_POLICY_PATH=examples/policies/tenant_isolation.rego
#
# Requests must name one of the caller's domains. A stream may ask for
# every domain ("*"), and a lookup by event id names none: for those the
# response policy decides, message by message, so a stream never delivers
# another tenant's event. The catalog may list every domain: the gateway
# shows only the entries this policy would let the caller search.
package stategate.authz

import rego.v1

default allow := false

tenant_domains := {d | some d in input.claims.domains}

# --- request stage (no response yet) ---

allow if {
	not input.response
	request_allowed
}

request_allowed if input.body.domain in tenant_domains

request_allowed if {
	input.method == "/stategate.EventService/Stream"
	input.body.domain == "*"
}

request_allowed if input.method == "/stategate.EventService/Get"

request_allowed if {
	input.method == "/stategate.CatalogService/List"
	input.body.domain in {"", "*"}
}

# --- response stage: every domain in the message must be the caller's ---

allow if {
	input.response
	every d in response_domains {
		d in tenant_domains
	}
}

# A State (Get).
response_domains contains input.response.domain

# An Event (writes, event lookups, each stream message).
response_domains contains input.response.state.domain

# StateService.Search.
response_domains contains s.domain if some s in input.response.stateValues

# EventService.Search.
response_domains contains e.state.domain if some e in input.response.events

# CatalogService.List.
response_domains contains e.domain if some e in input.response.entries
