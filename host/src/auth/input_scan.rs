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
//!
//! Of the two message fields (`body`, `response`) it also finds which parts
//! are read (`Paths`): a policy that only compares
//! `input.response.state.domain` with a claim is given the domain, not the
//! event's values, so deciding on a 1 MiB event costs what a small one does,
//! and the small document can key the decision cache. A message used in any
//! other way than by `.name` steps (`input.body[k]`, `f(input.body)`,
//! `x := input.body`) is read whole from the point where the steps stop.

use std::collections::{BTreeMap, BTreeSet};

/// The fields of `PolicyInput` (as policies see them).
pub const FIELDS: [&str; 7] = ["claims", "method", "metadata", "body", "client_stream", "server_stream", "response"];

/// The fields holding a message, whose parts are tracked.
pub const MESSAGES: [&str; 2] = ["body", "response"];

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
    /// Of the message fields referenced, the parts read.
    pub messages: BTreeMap<&'static str, Paths>,
    /// Whether any module calls a builtin from `NON_DETERMINISTIC`.
    pub non_deterministic: bool,
}

/// The parts of a JSON value a policy reads: all of it, or some of its
/// object members (each again in part or whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    All,
    Members(BTreeMap<String, Paths>),
}

impl Paths {
    /// Adds the value at `steps` (read whole from there).
    fn add(&mut self, steps: &[&str]) {
        let Paths::Members(members) = self else { return };
        match steps.split_first() {
            None => *self = Paths::All,
            Some((first, rest)) => members
                .entry((*first).to_owned())
                .or_insert_with(|| Paths::Members(BTreeMap::new()))
                .add(rest),
        }
    }

    /// Keeps the members on the way to `steps` (and an object there), for
    /// a presence test: see `Part` in `rego`, which gives a value that is
    /// not an object as itself, so `false` stays `false`.
    fn touch(&mut self, steps: &[&str]) {
        let Paths::Members(members) = self else { return };
        if let Some((first, rest)) = steps.split_first() {
            members
                .entry((*first).to_owned())
                .or_insert_with(|| Paths::Members(BTreeMap::new()))
                .touch(rest);
        }
    }

    /// Whether the value at `steps` may be read (in part or whole).
    pub fn covers(&self, steps: &[&str]) -> bool {
        match (self, steps.split_first()) {
            (Paths::All, _) | (_, None) => true,
            (Paths::Members(m), Some((first, rest))) => m.get(*first).is_some_and(|p| p.covers(rest)),
        }
    }
}

impl Reads {
    /// Whether the policy may read `field` of its input.
    pub fn reads(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }

    /// The parts of message field `field` (`body` or `response`) the policy
    /// may read; `None` when it reads none.
    pub fn message(&self, field: &str) -> Option<&Paths> {
        if !self.reads(field) {
            return None;
        }
        Some(self.messages.get(field).unwrap_or(&Paths::All))
    }

    /// Whether the same input always gets the same decision: then a
    /// decision can be cached, keyed by the input document the policy is
    /// given (only the parts it reads, so documents repeat).
    pub fn cacheable(&self) -> bool {
        !self.non_deterministic
    }
}

/// Scans the modules (their source text).
pub fn scan<'a>(modules: impl IntoIterator<Item = &'a str>) -> Reads {
    let mut fields = Some(BTreeSet::new());
    let mut messages = BTreeMap::new();
    let mut non_deterministic = false;
    for text in modules {
        for Ref { path: r, test } in refs(text) {
            if NON_DETERMINISTIC.iter().any(|p| r.starts_with(p)) {
                non_deterministic = true;
            }
            let Some(rest) = r.strip_prefix("input") else { continue };
            match rest.strip_prefix('.') {
                None if rest.is_empty() => fields = None,
                None => {} // another identifier, e.g. `inputs`
                Some(tail) => {
                    let steps: Vec<&str> = tail.split('.').collect();
                    let field = steps[0];
                    if let (Some(f), Some(known)) = (fields.as_mut(), FIELDS.iter().find(|k| **k == field)) {
                        f.insert(*known);
                    }
                    if let Some(message) = MESSAGES.iter().find(|m| **m == field) {
                        let paths = messages.entry(*message).or_insert_with(|| Paths::Members(BTreeMap::new()));
                        // A test of a message's (or a member's) presence
                        // needs the path to exist, not its value: an object
                        // of just the members read is defined and not
                        // `false` exactly when the whole one is.
                        if test {
                            paths.touch(&steps[1..]);
                        } else {
                            paths.add(&steps[1..]);
                        }
                    }
                    // An unknown field is undefined whatever the input holds.
                }
            }
        }
    }
    Reads {
        fields,
        messages,
        non_deterministic,
    }
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A dotted reference in code (`a.b.c`; an identifier alone is one).
#[derive(Debug, PartialEq, Eq)]
struct Ref {
    path: String,
    /// Whether it is a whole statement of a query body, alone or under
    /// `not` (`allow if { input.response; … }`, `not input.response`): a
    /// presence test, which reads whether the value is defined (and not
    /// `false`), not what it holds.
    test: bool,
}

/// The references in code, each starting at a word boundary not preceded
/// by a dot, so `data.x.input` does not yield `input`. Comments and strings
/// are skipped; a ref followed by anything but `.ident` ends there
/// (`input[x]` yields `input`).
///
/// A ref is a presence test when it is a statement of its own: after `not`,
/// or first in its statement inside a query body's braces (a `{` after a
/// word such as `if`, a rule head, `)`, `]`, a string or `}`, but not after
/// `in`, `not`, `with`, `as`, which open a set or object literal), and in
/// both cases followed by the end of the statement (a newline, `;`, `}`
/// or a comment).
fn refs(text: &str) -> Vec<Ref> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut prev_dot = false;
    // Of every open bracket, whether it is a query body.
    let mut brackets: Vec<bool> = Vec::new();
    // The last significant token: a word, or a punctuation char.
    let mut last_word: Option<String> = None;
    let mut last_char: Option<char> = None;
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
                (last_word, last_char) = (None, Some('"'));
            }
            '`' => {
                i += 1;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
                i += 1;
                prev_dot = false;
                (last_word, last_char) = (None, Some('"'));
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
                    let starts_statement = match (&last_word, last_char) {
                        (Some(w), _) => w == "not",
                        (None, None) => false,
                        (None, Some(p)) => matches!(p, '\n' | ';' | '{') && brackets.last() == Some(&true),
                    };
                    let test = starts_statement && ends_statement(&chars, i);
                    out.push(Ref { path: r.clone(), test });
                }
                prev_dot = false;
                (last_word, last_char) = (Some(r), None);
            }
            '\n' => {
                i += 1;
                prev_dot = false;
                (last_word, last_char) = (None, Some('\n'));
            }
            c if c.is_whitespace() => i += 1,
            c => {
                match c {
                    '{' => {
                        let body = match (&last_word, last_char) {
                            (Some(w), _) => !matches!(w.as_str(), "in" | "not" | "with" | "as"),
                            (None, Some(p)) => matches!(p, ')' | ']' | '"' | '}'),
                            (None, None) => false,
                        };
                        brackets.push(body);
                    }
                    '(' | '[' => brackets.push(false),
                    '}' | ')' | ']' => {
                        brackets.pop();
                    }
                    _ => {}
                }
                prev_dot = c == '.';
                (last_word, last_char) = (None, Some(c));
                i += 1;
            }
        }
    }
    out
}

/// Whether only blanks, then a newline, `;`, `}`, a comment or the end,
/// follow position `i`.
fn ends_statement(chars: &[char], mut i: usize) -> bool {
    while i < chars.len() && chars[i] != '\n' && chars[i].is_whitespace() {
        i += 1;
    }
    i == chars.len() || matches!(chars[i], '\n' | ';' | '}' | '#')
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
            assert_eq!(r.message("response"), Some(&Paths::All), "{code}");
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
    fn a_clock_makes_decisions_uncacheable() {
        let body = scan(["allow if input.body.domain == \"d\""]);
        assert!(body.reads("body") && body.cacheable());
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

    #[test]
    fn message_parts_read_by_name_steps_are_all_a_policy_gets() {
        let r = scan([r#"allow if { input.response.state.domain == input.claims.tenant; input.body.key != "" }
deny if input.response.state.values.secret
"#]);
        let response = r.message("response").unwrap();
        assert!(response.covers(&["state", "domain"]));
        assert!(response.covers(&["state", "values", "secret"]));
        assert!(!response.covers(&["state", "values", "other"]));
        assert!(!response.covers(&["claims"]));
        assert!(r.message("body").unwrap().covers(&["key"]));
        assert!(!r.message("body").unwrap().covers(&["values"]));
        assert_eq!(r.message("metadata"), None, "not a message");
    }

    #[test]
    fn a_message_used_otherwise_is_read_whole_from_there() {
        for (code, whole) in [
            ("allow if input.response.state.values[k] == 1", vec!["state", "values", "x"]),
            ("allow if count(input.response.state) > 1", vec!["state", "anything"]),
            ("allow if { x := input.response; x.state.domain == \"d\" }", vec!["anything"]),
            ("allow if input.response[\"state\"]", vec!["anything"]),
            ("import input.response.state as s\nallow if s.values.x", vec!["state", "values", "y"]),
        ] {
            let r = scan([code]);
            assert!(r.message("response").unwrap().covers(&whole), "{code}");
        }
        // The whole input read: every part of every message.
        assert_eq!(scan(["x := input"]).message("body"), Some(&Paths::All));
    }

    #[test]
    fn a_presence_test_reads_only_that_the_message_is_there() {
        let tenant = include_str!("../../../examples/policies/tenant_isolation.rego");
        let r = scan([tenant]);
        let response = r.message("response").unwrap();
        assert!(response.covers(&["state", "domain"]));
        assert!(!response.covers(&["state", "values"]), "the example policy is not given an event's values");
        assert!(response.covers(&["stateValues", "0", "values"]), "`some s in` reads the list whole");
        for (code, presence) in [
            ("allow if { input.response; true }", true),
            ("allow if {\n\tnot input.response\n\tx\n}", true),
            ("allow if { x; not input.response # gone\n}", true),
            ("allow {\n  input.response\n}", true),
            ("allow if not input.response", true),
            ("allow if input.response", false),
            ("x := {\n  input.response\n}", false),
            ("allow if { x in {\n input.response\n} }", false),
            ("allow if { f(\n input.response\n) }", false),
            ("allow if { not input.response == 1 }", false),
            ("allow if { input.response }\ny := input.response", false),
        ] {
            let r = scan([code]);
            let whole = r.message("response").unwrap().covers(&["state", "values"]);
            assert_eq!(!whole, presence, "{code}");
        }
    }
}
