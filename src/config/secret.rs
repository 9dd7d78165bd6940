//! Secrets referenced by the config: read from the environment, a file, or a systemd
//! credential, and kept in a type whose `Debug` never shows the value.

use super::model::SecretRef;
use std::fmt;

/// A secret value. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a secret could not be read: it is not on this host, or it is there but unusable.
enum ReadError {
    Unavailable(String),
    Invalid(String),
}
use ReadError::{Invalid, Unavailable};

impl SecretRef {
    /// Reads the secret. The error names where it looked, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self.read() {
            Ok(value) => Ok(value),
            // Not on this host: an offline check goes on with a stand-in (`super::host`).
            Err(Unavailable(e)) if super::host::missing(|| e.clone()) => {
                Ok(Secret(super::host::stand_in()))
            }
            Err(Unavailable(e)) => Err(e),
            Err(Invalid(e)) => Err(e),
        }
    }

    fn read(&self) -> Result<Secret, ReadError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| Unavailable(format!("environment variable {name} is not set")))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| Unavailable(format!("cannot read secret file {path}: {e}")))?,
            SecretRef::Credential(name) => {
                let dir = std::env::var("CREDENTIALS_DIRECTORY").map_err(|_| {
                    Unavailable(format!("credential {name}: CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"))
                })?;
                let path = std::path::Path::new(&dir).join(name);
                std::fs::read_to_string(&path).map_err(|e| {
                    Unavailable(format!("cannot read credential {}: {e}", path.display()))
                })?
            }
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(Invalid(format!("{} is empty", self.describe())));
        }
        Ok(Secret(value))
    }

    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(n) => format!("environment variable {n}"),
            SecretRef::File(p) => format!("secret file {p}"),
            SecretRef::Credential(n) => format!("credential {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn missing_env_names_the_variable() {
        let r = SecretRef::Env("ORION_PROXY_TEST_SURELY_UNSET".into()).resolve();
        assert!(r.unwrap_err().contains("ORION_PROXY_TEST_SURELY_UNSET"));
    }
}
