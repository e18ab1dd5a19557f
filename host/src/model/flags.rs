//! Value parsers of flags that several configuration sections share.
//!
//! Booleans are read as Go's `strconv.ParseBool` reads them (`1 t T TRUE
//! true True`, `0 f F FALSE false False`), because stategate v0.5.0 read its
//! variables that way; anything else stops the start naming the variable
//! (v0.5.0 silently took it as false, which can turn `STATEGATE_AUTH_DISABLED=yes`
//! into an unnoticed surprise either way).

use clap::builder::TypedValueParser;

/// A boolean flag's value as Go's `strconv.ParseBool` reads it.
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The value parser of every boolean flag: Go's spellings, and an error
/// naming the variable (clap's own names only the flag).
#[derive(Clone, Copy, Debug, Default)]
pub struct GoBool;

impl TypedValueParser for GoBool {
    type Value = bool;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<bool, clap::Error> {
        if let Some(b) = value.to_str().and_then(parse_go_bool) {
            return Ok(b);
        }
        let flag = arg.and_then(|a| a.get_long()).map(|l| format!("--{l}")).unwrap_or_else(|| "a flag".into());
        let name = match arg.and_then(|a| a.get_env()).and_then(|e| e.to_str()) {
            Some(var) => format!("{var} ({flag})"),
            None => flag,
        };
        let message = format!(
            "{name}: {:?} is not a boolean; use one of 1 t T TRUE true True 0 f F FALSE false False\n",
            value.to_string_lossy()
        );
        Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, message).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(["true", "false"].into_iter().map(clap::builder::PossibleValue::new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_booleans() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Some(false), "{f}");
        }
        for bad in ["", "yes", "on", "tRuE", " true", "2"] {
            assert_eq!(parse_go_bool(bad), None, "{bad:?}");
        }
    }
}
