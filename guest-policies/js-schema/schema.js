// A stategate policy hook in JavaScript (componentize-js): a per-type schema
// for what a tenant writes. `Set` is refused, with the reason, when its values
// lack a required field or a field has the wrong JSON type; everything else
// passes. The rules come from the hook's `config`:
//
//   "config": {
//     "required": {"order": ["id", "total"]},
//     "types":    {"order": {"total": "number", "id": "string"}}
//   }
//
// JSON types: "string", "number", "boolean", "object", "array", "null".
import { config, log } from "stategate:gateway/host@0.3.0";

// Config values that are not strings arrive as JSON text.
function rules(name) {
  const text = config(name);
  if (text === undefined || text === null) return {};
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`config ${name} is not JSON: ${e.message}`);
  }
}

function jsonType(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

export const policy = {
  authorizeRequest(input) {
    const doc = JSON.parse(input);
    if (doc.method !== "/stategate.StateService/Set") return { tag: "allow" };
    const body = doc.body || {};
    const values = body.values || {};
    const problems = [];
    for (const field of rules("required")[body.type] || []) {
      if (!(field in values)) problems.push(`missing ${field}`);
    }
    for (const [field, want] of Object.entries(rules("types")[body.type] || {})) {
      if (field in values && jsonType(values[field]) !== want) {
        problems.push(`${field} must be ${want}, not ${jsonType(values[field])}`);
      }
    }
    if (problems.length === 0) return { tag: "allow" };
    const reason = `${body.type} values: ${problems.join("; ")} (js schema policy)`;
    log("info", `refused ${body.domain}/${body.type}/${body.key}: ${reason}`);
    return { tag: "deny", val: reason };
  },

  authorizeResponse(_input) {
    return { tag: "allow" };
  },
};
