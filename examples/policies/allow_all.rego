# Allows every call of a verified token. With authentication on, a gateway
# without a request policy refuses every request (deny by default); this is
# the explicit way to let every authenticated caller do everything (v0.5.0's
# sample STATEGATE_REQUEST_POLICY was the same module, base64-encoded).
package stategate.authz

import rego.v1

default allow := true
