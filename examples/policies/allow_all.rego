# Allows every call. A starting point, and the policy to use as the
# response policy when only requests need checking.
package stategate.authz

import rego.v1

default allow := true
