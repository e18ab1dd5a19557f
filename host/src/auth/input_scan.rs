//! What a Rego policy can read of its input, found by scanning the code of
//! its modules (comments and string literals skipped).
//!
//! The gateway uses the answer to skip work per call: a request body that no
//! module reads is not serialized for the policy, and a policy that reads
//! only who calls and which method (and calls no builtin whose answer can
//! change between two calls with the same input) may have its decisions
//! cached. The scan is conservative: any use of `input` other than
//! `input.<field>` (e.g. `input[x]`, `walk(input)`, `import input`,
//! `with input as`) counts as reading all of it, and a field name anywhere in
//! code after `input.` counts even if that line never runs.

use std::collections::BTreeSet;

/// The fields of `PolicyInput` (as policies see them).
pub const FIELDS: [&str; 7] = ["claims", "method", "metadata", "body", "client_stream", "server_stream", "response"];

/// Builtins (by prefix of their dotted name) whose result may differ
/// between two evaluations with the same input: clocks, randomness, the
/// network, the runtime, and verifications that read the clock.
const NON_DETERMINISTIC: [&str; 8] = [
    "time.",
    "rand.",
    "http.send",
    "uuid.",
    "opa.runtime",
    "net.lookup_ip_addr",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reads {
    /// The input fields referenced; `None` when the whole input is.
    pub fields: Option<BTreeSet<&'static str>>,
    /// Whether any module calls a builtin from `NON_DETERMINISTIC`.
    pub non_deterministic: bool,
}

impl Reads {
    /// Whether the policy may read `field` of its input.
    pub fn reads(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }

    /// Whether the same input always gets the same decision, and the input
    /// read is only about the caller and the call (not its messages, which
    /// rarely repeat): then a decision can be cached.
    pub fn cacheable(&self) -> bool {
        !self.non_deterministic && !self.reads("body") && !self.reads("response")
    }
}

/// Scans the modules (their source text).
pub fn scan<'a>(modules: impl IntoIterator<Item = &'a str>) -> Reads {
    let mut fields = Some(BTreeSet::new());
    let mut non_deterministic = false;
    for text in modules {
        for r in refs(text) {
            if NON_DETERMINISTIC.iter().any(|p| r.starts_with(p)) {
                non_deterministic = true;
            }
            let Some(rest) = r.strip_prefix("input") else { continue };
            match rest.strip_prefix('.') {
                None if rest.is_empty() => fields = None,
                None => {} // another identifier, e.g. `inputs`
                Some(tail) => {
                    let field = tail.split('.').next().unwrap_or("");
                    if let (Some(f), Some(known)) = (fields.as_mut(), FIELDS.iter().find(|k| **k == field)) {
                        f.insert(*known);
                    }
                    // An unknown field is undefined whatever the input holds.
                }
            }
        }
    }
    Reads { fields, non_deterministic }
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The dotted references in code (`a.b.c`; an identifier alone is one),
/// each starting at a word boundary not preceded by a dot, so
/// `data.x.input` does not yield `input`. Comments and strings are skipped;
/// a ref followed by anything but `.ident` ends there (`input[x]` yields
/// `input`).
fn refs(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut prev_dot = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                prev_dot = false;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                prev_dot = false;
            }
            '`' => {
                i += 1;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
                i += 1;
                prev_dot = false;
            }
            c if ident_char(c) => {
                let mut r = String::new();
                loop {
                    while i < chars.len() && ident_char(chars[i]) {
                        r.push(chars[i]);
                        i += 1;
                    }
                    if i + 1 < chars.len() && chars[i] == '.' && ident_char(chars[i + 1]) {
                        r.push('.');
                        i += 1;
                    } else {
                        break;
                    }
                }
                if !prev_dot && !r.starts_with(|c: char| c.is_ascii_digit()) {
                    out.push(r);
                }
                prev_dot = false;
            }
            c if c.is_whitespace() => i += 1,
            c => {
                prev_dot = c == '.';
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: &Reads) -> Option<Vec<&'static str>> {
        r.fields.as_ref().map(|f| f.iter().copied().collect())
    }

    #[test]
    fn policy_reads_the_fields_it_names() {
        let r = scan([r#"package stategate.authz
import rego.v1
default allow := false
roles := {r | some r in input.claims.roles}
allow if { "reader" in roles; input.method in {"/a"} }
"#]);
        assert_eq!(fields(&r), Some(vec!["claims", "method"]));
        assert!(r.cacheable());
    }

    #[test]
    fn any_other_use_of_input_reads_it_all() {
        for code in ["x := input", "x := input[\"body\"]", "x := walk(input)", "import input", "allow if f with input as {}"] {
            let r = scan([code]);
            assert_eq!(r.fields, None, "{code}");
            assert!(!r.cacheable(), "{code}");
        }
    }

    #[test]
    fn comments_strings_and_other_refs_do_not_count() {
        let r = scan([r##"# input.body is not read here
x := "input.body # input" # input
y := `input.response`
z := data.other.input
w := inputs.body
allow if input.method == "/a"
"##]);
        assert_eq!(fields(&r), Some(vec!["method"]));
    }

    #[test]
    fn a_body_or_a_clock_makes_decisions_uncacheable() {
        let body = scan(["allow if input.body.domain == \"d\""]);
        assert!(body.reads("body") && !body.cacheable());
        let clock = scan(["allow if { input.claims.exp > time.now_ns() }"]);
        assert!(clock.non_deterministic && !clock.cacheable());
        let imported = scan(["import input.body as b\nallow if b.key == \"k\""]);
        assert!(imported.reads("body"));
    }

    #[test]
    fn fields_in_several_modules_add_up() {
        let r = scan(["allow if input.claims.sub == \"a\"", "deny if input.metadata.x == \"1\""]);
        assert_eq!(fields(&r), Some(vec!["claims", "metadata"]));
    }
}
