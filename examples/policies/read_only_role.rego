# Callers whose token has the role "reader" may only read (get, search,
# stream); callers with the role "writer" may also write. Any other caller
# is refused. Roles come from the token's `roles` claim (a list).
#
# Use it as the request policy (STATEGATE_REQUEST_POLICY_PATH).
package stategate.authz

import rego.v1

default allow := false

reads := {
	"/stategate.StateService/Get",
	"/stategate.StateService/Search",
	"/stategate.EventService/Stream",
	"/stategate.EventService/Search",
	"/stategate.EventService/Get",
}

roles := {r | some r in input.claims.roles}

allow if "writer" in roles

allow if {
	"reader" in roles
	input.method in reads
}
