// A stategate policy hook in JavaScript (world `policy-hook`,
// wit/policy.wit). The gateway calls it after its Rego policies with the
// policy input as JSON: {"claims", "method", "metadata", "body",
// "client_stream", "server_stream"} and, on responses, "response".
//
// This one allows everything except requests for the record key in config
// `forbidden_key` (default "forbidden"), and removes the field config
// `redact` (if set) from returned values.
// Check it with `stategate guest check <file.wasm>`.
import { config } from "stategate:gateway/host@0.3.0";

export const policy = {
  authorizeRequest(input) {
    let doc;
    try {
      doc = JSON.parse(input);
    } catch (e) {
      return { tag: "deny", val: `unreadable policy input: ${e.message}` }; // fail closed
    }
    const forbidden = config("forbidden_key") ?? "forbidden";
    const key = (doc.body || {}).key;
    if (key === forbidden) return { tag: "deny", val: `key ${JSON.stringify(key)} is forbidden` };
    return { tag: "allow" };
  },

  authorizeResponse(_input) {
    const field = config("redact");
    if (field) return { tag: "redact", val: [field] };
    return { tag: "allow" };
  },
};
