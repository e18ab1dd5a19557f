//! Provider objects: `{"name":"redis","addr":…}`, the JSON of
//! `STATEGATE_STORAGE_PROVIDER`, `STATEGATE_CHANNEL_PROVIDER` and the like.
//! The `"name"` picks a provider, the other keys are that provider's typed
//! options, read with unknown keys refused.
//!
//! [`provider_spec!`](crate::provider_spec) declares such an enum, one
//! variant per provider and the options struct of each, so the list of
//! names, the parser and `name()` cannot disagree. It reads the name first
//! and then the options on their own (instead of serde's internally tagged
//! enums, whose errors lose the key): an error names the key it is about
//! (`tls: invalid type: string "yes", expected a boolean`), and an unknown
//! key is named with the known ones listed.

use super::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// An enum of providers picked by `"name"`; see [`provider_spec!`](crate::provider_spec).
pub trait ProviderSpec: Sized {
    /// The accepted names, each provider's first, built in or not.
    const NAMES: &'static [&'static str];
    /// The cargo feature that builds the provider `name` in, when this
    /// binary was built without it.
    fn missing_feature(name: &str) -> Option<&'static str>;
    /// The variant `name` picks, with `options` (the object without its name).
    fn from_options(name: &str, options: Map<String, Value>) -> std::result::Result<Self, String>;
}

/// Parses the text of `variable`. `not_built_in` names providers that are
/// known but deliberately absent, with the reason, so a user gets that
/// reason instead of "unknown provider".
pub fn parse<T: ProviderSpec>(variable: &str, text: &str, not_built_in: &[(&str, &str)]) -> Result<T> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::invalid(variable, format!("not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(Error::invalid(variable, "must be a JSON object such as {\"name\":\"inmem\"}"));
    };
    let name = match object.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(Error::invalid(variable, "needs a \"name\" field (a string) naming the provider")),
    };
    if let Some((_, why)) = not_built_in.iter().find(|(n, _)| *n == name) {
        return Err(Error::invalid(variable, format!("provider {name:?} is not built in: {why}")));
    }
    if let Some(feature) = T::missing_feature(&name) {
        return Err(Error::invalid(
            variable,
            format!("provider {name:?} is not built into this binary; rebuild with `--features {feature}`"),
        ));
    }
    if !T::NAMES.contains(&name.as_str()) {
        return Err(Error::invalid(
            variable,
            format!("unknown provider {name:?}; known: {}", T::NAMES.join(", ")),
        ));
    }
    T::from_options(&name, object).map_err(|why| Error::invalid(variable, format!("{name}: {why}")))
}

/// The client certificate and key files of a provider from its own keys
/// `cert` / `key` (v0.5.0: `client_cert_file` / `client_key_file`) and
/// v0.5.0's `tls_cert` / `tls_key`. v0.5.0's providers switched on a client
/// certificate when `client_cert_file` and `client_key_file` were set but
/// loaded it from `tls_cert` / `tls_key` (its Redis and MongoDB providers
/// presented that pair), so a v0.5.0 deployment with a client certificate
/// set all four. Both pairs are accepted; given together they must name
/// the same files. A half pair is an error.
pub fn client_certificate(
    cert: &Option<String>,
    key: &Option<String>,
    tls_cert: &Option<String>,
    tls_key: &Option<String>,
) -> Result<Option<(String, String)>> {
    let pair = |c: &Option<String>, k: &Option<String>, field: &'static str, names: &str| match (c, k) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err(Error::invalid(field, format!("{names} go together"))),
    };
    let own = pair(cert, key, "cert_file", "\"cert_file\" and \"key_file\" (v0.5.0: \"client_cert_file\" and \"client_key_file\")")?;
    let v050 = pair(tls_cert, tls_key, "tls_cert", "\"tls_cert\" and \"tls_key\"")?;
    match (own, v050) {
        (Some(a), Some(b)) if a != b => Err(Error::invalid(
            "tls_cert",
            "names other files than client_cert_file / client_key_file; v0.5.0 read both pairs \
             inconsistently, so give the same files, or only one pair",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// Reads one provider's options; the error names the key at fault.
pub fn options<T: DeserializeOwned>(options: Map<String, Value>) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(Value::Object(options)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." | "?" => inner.to_string(),
            path => format!("{path}: {inner}"),
        }
    })
}

/// Declares a provider enum: `Variant(Options) = "name" | "alias"`, each
/// `Options` a `Deserialize` struct (with `deny_unknown_fields`). A
/// provider behind a cargo feature adds `if feature = "name"`: without the
/// feature its variant does not exist, and naming it is an error that says
/// which feature builds it in (not "unknown provider").
#[macro_export]
macro_rules! provider_spec {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Enum:ident {
            $( $(#[$vmeta:meta])* $Variant:ident($Options:ty) = $name:literal $(| $alias:literal)* $(if feature = $feature:literal)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $Enum {
            $( $(#[cfg(feature = $feature)])? $(#[$vmeta])* $Variant($Options) ),*
        }

        impl $crate::model::spec::ProviderSpec for $Enum {
            const NAMES: &'static [&'static str] = &[$($name $(, $alias)*),*];

            #[allow(unreachable_code)]
            fn missing_feature(name: &str) -> Option<&'static str> {
                match name {
                    $( $name $(| $alias)* => {
                        $( #[cfg(not(feature = $feature))] return Some($feature); )?
                        None
                    } )*
                    _ => None,
                }
            }

            fn from_options(
                name: &str,
                options: serde_json::Map<String, serde_json::Value>,
            ) -> std::result::Result<Self, String> {
                match name {
                    $( $(#[cfg(feature = $feature)])? $name $(| $alias)* => Ok($Enum::$Variant($crate::model::spec::options(options)?)), )*
                    other => Err(format!("unknown provider {other:?}")),
                }
            }
        }

        impl $Enum {
            /// The provider's name, for logs and `/readyz`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( $(#[cfg(feature = $feature)])? $Enum::$Variant(_) => $name, )*
                }
            }
        }
    };
}

/// A provider address as logs may show it: a password in the URL's user
/// part (`postgres://app:secret@db/x`) or in a `password=` parameter is
/// replaced by `***`; everything else, the user name included, stays, so
/// an operator can tell which server and account are meant.
pub fn redacted_address(addr: &str) -> String {
    let mut out = addr.to_owned();
    if let Some(scheme) = out.find("://") {
        let start = scheme + 3;
        let end = out[start..].find(['/', '?', '#']).map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password=").map(|i| from + i + "password=".len()) {
        let end = out[i..].find(['&', ';', ' ']).map_or(out.len(), |j| i + j);
        out.replace_range(i..end, "***");
        from = i + 3;
    }
    out
}

#[cfg(test)]
// The test enum's gated provider names a feature no build has.
#[allow(unexpected_cfgs)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_their_passwords_only() {
        assert_eq!(redacted_address("postgres://app:s3cr@t@db:5432/x?sslmode=require"), "postgres://app:***@db:5432/x?sslmode=require");
        assert_eq!(redacted_address("mongodb://u:p@a:1,b:2/?replicaSet=rs0"), "mongodb://u:***@a:1,b:2/?replicaSet=rs0");
        assert_eq!(redacted_address("mysql://app@db:3306/x"), "mysql://app@db:3306/x");
        assert_eq!(redacted_address("amqp://user:pw@rabbit:5672/%2f"), "amqp://user:***@rabbit:5672/%2f");
        assert_eq!(redacted_address("nats:4222"), "nats:4222");
        assert_eq!(redacted_address("host=db user=app password=pw dbname=x"), "host=db user=app password=*** dbname=x");
        assert_eq!(redacted_address("redis://r:6379/?Password=x&db=1"), "redis://r:6379/?Password=***&db=1");
    }
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[serde(default)]
        tls: bool,
        #[serde(alias = "user")]
        username: Option<String>,
    }

    crate::provider_spec! {
        #[derive(Debug, PartialEq)]
        enum Spec {
            Plain(Opts) = "plain" | "simple",
            Absent(Opts) = "absent" | "gone-too" if feature = "no-such-feature",
        }
    }

    fn err(text: &str) -> String {
        parse::<Spec>("VAR", text, &[("gone", "not here")]).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_variable_the_provider_and_the_key() {
        assert_eq!(
            parse::<Spec>("VAR", r#"{"name":"simple","user":"u"}"#, &[]).unwrap(),
            Spec::Plain(Opts { tls: false, username: Some("u".into()) })
        );
        let e = err(r#"{"name":"plain","tls":"yes"}"#);
        assert!(e.contains("VAR") && e.contains("plain: tls: invalid type"), "{e}");
        let e = err(r#"{"name":"plain","tsl":true}"#);
        assert!(e.contains("unknown field `tsl`") && e.contains("`tls`"), "{e}");
        let e = err(r#"{"name":"plane"}"#);
        assert!(e.contains("unknown provider \"plane\"; known: plain, simple, absent, gone-too"), "{e}");
        assert!(err(r#"{"name":"gone"}"#).contains("not built in: not here"));
        for name in ["absent", "gone-too"] {
            let e = err(&format!(r#"{{"name":"{name}"}}"#));
            assert!(e.contains(&format!("provider \"{name}\" is not built into this binary; rebuild with `--features no-such-feature`")), "{e}");
        }
        assert!(err(r#"{"nam":"plain"}"#).contains("needs a \"name\""));
        assert!(err("[]").contains("must be a JSON object"));
        assert!(err("{").contains("not valid JSON"));
        let spec: Spec = parse("VAR", r#"{"name":"plain"}"#, &[]).unwrap();
        assert_eq!(spec.name(), "plain");
    }
}
