//! The values `--config KEY=VALUE` gives a component, and every interface
//! through which a component reads them: `wasi:config/store` as wasmtime
//! (`0.2.0-rc.1`) and Spin (`0.2.0-draft-2024-09-27`) link it, and Spin's
//! own variables (`fermyon:spin/variables@2.0.0`, `spin:variables@3.0.0`).
//!
//! The lookup is written once here; `interfaces.rs` adapts it to each
//! interface's types. `wasi:config` answers any key it was given, as
//! `wasmtime serve -S config-var` does. Spin's variables follow Spin: a name
//! that is not a valid Spin variable name (lower-case letters, digits and
//! single underscores, starting with a letter) is `invalid-name`, a valid
//! name with no value `undefined`, so a component behaves here as it does on
//! Spin.

mod interfaces;

use std::collections::BTreeMap;

pub use interfaces::{Config, add_to_linker};

/// The component's variables, shared by all its requests.
#[derive(Debug, Default)]
pub struct Variables {
    values: BTreeMap<String, String>,
}

impl FromIterator<(String, String)> for Variables {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Self {
            values: pairs.into_iter().collect(),
        }
    }
}

/// Why a Spin variable has no value; the texts are Spin's.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// Not a name Spin allows.
    InvalidName(String),
    /// A valid name with no value given.
    Undefined(String),
}

impl Variables {
    /// The value of `key` as given, for `wasi:config`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Every key and value, for `wasi:config`'s `get-all`.
    pub fn all(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The value of the Spin variable `name`.
    pub fn spin(&self, name: &str) -> Result<String, Missing> {
        check_spin_name(name)
            .map_err(|reason| Missing::InvalidName(format!("{name:?}: {reason}")))?;
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| Missing::Undefined(format!("no variable for {name:?}")))
    }
}

/// Checks `name` against Spin's rule for variable names, which lets a name be
/// written as an environment variable (`SPIN_VARIABLE_NAME`) or a path.
pub fn check_spin_name(name: &str) -> Result<(), String> {
    let (Some(first), Some(last)) = (name.bytes().next(), name.bytes().last()) else {
        return Err("must not be empty".into());
    };
    if let Some(invalid) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "invalid character {invalid:?}. Variable names may contain only lower-case \
             letters, numbers, and underscores."
        ));
    }
    if !first.is_ascii_lowercase() {
        return Err("must start with a lowercase ASCII letter".into());
    }
    if !last.is_ascii_alphanumeric() {
        return Err("must end with a lowercase ASCII letter or digit".into());
    }
    if name.contains("__") {
        return Err("must not contain multiple consecutive underscores".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables() -> Variables {
        [("api_url", "https://x"), ("Upper", "u")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spin_names_follow_spins_rule() {
        let vars = variables();
        assert_eq!(vars.spin("api_url").as_deref(), Ok("https://x"));
        assert!(matches!(vars.spin("missing"), Err(Missing::Undefined(_))));
        for bad in ["", "Upper", "1st", "_a", "a_", "a__b", "a-b", "a.b"] {
            assert!(
                matches!(vars.spin(bad), Err(Missing::InvalidName(_))),
                "{bad:?} should be an invalid name"
            );
        }
    }

    #[test]
    fn wasi_config_answers_any_key_given() {
        let vars = variables();
        assert_eq!(vars.get("Upper"), Some("u"));
        assert_eq!(vars.get("nope"), None);
        assert_eq!(vars.all().len(), 2);
    }
}
