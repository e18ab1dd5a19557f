//! `$regex` patterns: MongoDB's PCRE syntax run on the `regex` crate's
//! linear-time engine, compiled once per query.
//!
//! **Cannot run away.** The engine never backtracks: matching takes time
//! linear in the text for a given pattern, so `(a+)+$` over a long string
//! costs what `a+$` does. A pattern is at most `MAX_REGEX_BYTES`, its
//! compiled program at most `REGEX_SIZE_LIMIT` bytes and its lazy DFA cache
//! `REGEX_DFA_LIMIT` bytes, its nesting `REGEX_NEST_LIMIT` deep; a filter
//! holds at most `MAX_REGEXES` patterns. Past any of these the query is
//! `INVALID_ARGUMENT`.
//!
//! **Options** (`$options`): `i` case-insensitive, `m` `^`/`$` at line
//! breaks, `s` `.` matches a line break, `x` white space and `#` comments
//! in the pattern are ignored (not inside a character class, as PCRE), `u`
//! accepted and redundant (as in MongoDB: patterns are UTF-8). Any other
//! letter is refused naming it.
//!
//! **PCRE, translated** where the engines differ on the same syntax:
//! `$` without `m` and `\Z` also match before a final line break; `\d \w \s`
//! (and `\D \W \S`) are ASCII, as in MongoDB's PCRE (no Unicode properties).
//! PCRE features a linear-time engine cannot have (back-references,
//! look-around, possessive or atomic groups) are refused naming the error.
//! Left as the engine has them (documented in docs/guarantees.md): `\b` is
//! Unicode-aware, and with `m` a `^` also matches after a final line break.

use crate::model::{Error, Result};
use std::fmt;
use std::sync::Arc;

/// Longest `$regex` pattern, in bytes.
pub const MAX_REGEX_BYTES: usize = 4096;
/// Most `$regex` patterns in one filter.
pub const MAX_REGEXES: usize = 16;
/// Largest compiled program of one pattern, in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Largest lazy-DFA cache of one pattern, in bytes.
pub const REGEX_DFA_LIMIT: usize = 2 << 20;
/// Deepest nesting of groups and repetitions in one pattern.
pub const REGEX_NEST_LIMIT: u32 = 64;

/// A compiled `$regex` with its options.
#[derive(Clone)]
pub struct Pattern {
    pub source: String,
    pub options: String,
    regex: Arc<regex::Regex>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/{}", self.source, self.options)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.options == other.options
    }
}

impl Pattern {
    /// Compiles `source` with MongoDB `options`; `field` names the query
    /// and `key` the field path in errors.
    pub fn compile(field: &str, key: &str, source: &str, options: &str) -> Result<Pattern> {
        let bad = |why: String| Error::invalid(field, format!("$regex on {key}: {why}"));
        if source.len() > MAX_REGEX_BYTES {
            return Err(bad(format!("the pattern is longer than {MAX_REGEX_BYTES} bytes")));
        }
        let (mut i, mut m, mut s, mut x) = (false, false, false, false);
        for c in options.chars() {
            match c {
                'i' => i = true,
                'm' => m = true,
                's' => s = true,
                'x' => x = true,
                'u' => {}
                other => {
                    return Err(bad(format!("unsupported $options flag {other:?}; supported: i m s x u")));
                }
            }
        }
        let translated = translate(source, m, x);
        let regex = regex::RegexBuilder::new(&translated)
            .case_insensitive(i)
            .multi_line(m)
            .dot_matches_new_line(s)
            .ignore_whitespace(x)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_LIMIT)
            .nest_limit(REGEX_NEST_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => {
                    bad(format!("the pattern compiles to more than {limit} bytes; simplify it"))
                }
                e => bad(format!(
                    "not a pattern the linear-time engine runs (back-references, look-around and \
                     possessive or atomic groups are not supported): {}",
                    first_line(&e.to_string())
                )),
            })?;
        Ok(Pattern {
            source: source.to_owned(),
            options: options.to_owned(),
            regex: Arc::new(regex),
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// The error's gist; the engine's messages draw the pattern over lines.
fn first_line(s: &str) -> String {
    let last = s.lines().rfind(|l| l.starts_with("error:"));
    last.unwrap_or(s).chars().take(200).collect()
}

/// PCRE syntax the `regex` crate reads differently, rewritten (see the
/// module comment). Escapes and character classes are walked so only real
/// anchors and class escapes change.
fn translate(source: &str, multi_line: bool, extended: bool) -> String {
    let mut out = String::with_capacity(source.len() + 16);
    let mut chars = source.chars().peekable();
    // Inside a character class; `class_start` while its first character
    // (where `]` and `^` are literal or negation) has not been read.
    let mut in_class = false;
    let mut class_start = false;
    while let Some(c) = chars.next() {
        if c == '\\' {
            let Some(next) = chars.next() else {
                out.push('\\');
                break;
            };
            class_start = false;
            out.push_str(&escape(next, in_class));
            continue;
        }
        if in_class {
            let first = class_start;
            class_start = false;
            match c {
                '^' if first => {
                    out.push('^');
                    class_start = true;
                }
                ']' if first => out.push_str("\\]"),
                ']' => {
                    in_class = false;
                    out.push(']');
                }
                '[' if chars.peek() == Some(&':') => {
                    // A POSIX class such as [:alpha:] is copied whole.
                    out.push('[');
                    for d in chars.by_ref() {
                        out.push(d);
                        if d == ']' {
                            break;
                        }
                    }
                }
                // The regex crate reads these as class operators or (with
                // `x`) ignores white space inside a class; PCRE does neither.
                '[' | '&' | '~' | '-' if c != '-' || chars.peek() == Some(&'-') => {
                    out.push('\\');
                    out.push(c);
                }
                c if extended && (c.is_whitespace() || c == '#') => out.push_str(&format!("\\x{{{:x}}}", c as u32)),
                c => out.push(c),
            }
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                class_start = true;
                out.push('[');
            }
            '$' if !multi_line => out.push_str(r"(?:\n?\z)"),
            c => out.push(c),
        }
    }
    out
}

/// An escaped character, in or outside a class.
fn escape(c: char, in_class: bool) -> String {
    let (ascii, negated) = match c {
        'd' => ("0-9", false),
        'w' => ("0-9A-Za-z_", false),
        's' => (r"\t\n\x0B\x0C\r ", false),
        'D' => ("0-9", true),
        'W' => ("0-9A-Za-z_", true),
        'S' => (r"\t\n\x0B\x0C\r ", true),
        'Z' if !in_class => return r"(?:\n?\z)".into(),
        c => return format!("\\{c}"),
    };
    match (in_class, negated) {
        (false, false) => format!("[{ascii}]"),
        (false, true) => format!("[^{ascii}]"),
        (true, false) => ascii.to_owned(),
        // A negated set inside a class: its POSIX name (same ASCII sets).
        (true, true) => match c {
            'D' => "[:^digit:]".into(),
            'W' => "[:^word:]".into(),
            _ => "[:^space:]".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, o: &str, t: &str) -> bool {
        Pattern::compile("q", "a", p, o).unwrap().is_match(t)
    }

    #[test]
    fn options_map_to_pcre_meaning() {
        assert!(m("^ab", "i", "ABc") && !m("^ab", "", "ABc"));
        assert!(m("^b$", "m", "a\nb\nc") && !m("^b$", "", "a\nb\nc"));
        assert!(m("a.b", "s", "a\nb") && !m("a.b", "", "a\nb"));
        assert!(m("a b # comment", "x", "ab"));
        assert!(m("a[ ]b", "x", "a b"), "white space in a class stays, as in PCRE");
        assert!(m("é", "u", "é"));
        for bad in ["g", "l", "iq"] {
            let err = Pattern::compile("query_string", "a", "x", bad).unwrap_err().to_string();
            assert!(err.contains("$options") && err.contains("supported: i m s x u"), "{err}");
        }
    }

    #[test]
    fn pcre_anchors_and_ascii_classes() {
        assert!(m("abc$", "", "abc\n") && !m("abc$", "", "abc\nx"));
        assert!(m(r"abc\Z", "", "abc\n") && !m(r"abc\z", "", "abc\n"));
        assert!(m(r"^\d+$", "", "123") && !m(r"^\d$", "", "٣"), "\\d is ASCII");
        assert!(m(r"^[\w-]+$", "", "a-b_c") && !m(r"^\w$", "", "é"));
        assert!(m(r"^[^\D]$", "", "7") && m(r"[$]", "", "a$"));
        assert!(m(r"^[]a]+$", "", "]a") && m(r"^[a-c&&]+$", "", "&&b"), "PCRE class syntax");
        assert!(m(r"\$", "", "$") && m(r"[[:alpha:]]", "", "x"));
    }

    #[test]
    fn runaway_and_unsupported_patterns_are_refused() {
        // Linear time: the classic catastrophic pattern is instant.
        let long = "a".repeat(100_000) + "!";
        let start = std::time::Instant::now();
        assert!(!m("^(a+)+$", "", &long));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        for (p, says) in [
            (r"(a)\1", "linear-time"),
            ("(?=a)", "linear-time"),
            ("(", "linear-time"),
            (r"\w{1000}{1000}", "compiles to more than"),
        ] {
            let err = Pattern::compile("query_string", "a", p, "").unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("query_string"), "{p}: {err}");
        }
        let err = Pattern::compile("q", "a", &"a".repeat(MAX_REGEX_BYTES + 1), "").unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let nested = "(".repeat(100) + &")".repeat(100);
        assert!(Pattern::compile("q", "a", &nested, "").is_err());
    }
}
