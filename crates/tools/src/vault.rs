//! The vault: named secrets, sealed at rest, never handed back.
//!
//! A value is sealed with the master key (XChaCha20-Poly1305, random nonce) over
//! `name NUL value`, so a sealed value copied onto another secret's row does not
//! open as that secret. [`SecretValue`] can be deserialized (so a request can
//! carry one in) but implements neither `Serialize` nor a revealing `Debug`, so
//! no response, log line or error can print it by accident; only this crate can
//! read it, when a call injects it into an upstream request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Error, ErrorCode, Result, time::rfc3339};

use crate::{Tools, store};

/// A secret's value. Readable only inside this crate; prints as `SecretValue(…)`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(…)")
    }
}

impl JsonSchema for SecretValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "writeOnly": true,
            "minLength": 1,
            "maxLength": MAX_VALUE_BYTES,
            "description": "The secret's value; stored sealed and never returned."
        })
    }
}

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// The largest secret accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// A request to store (or replace) a secret.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecret {
    /// Letters, digits, `_`, `-` and `.`; 1–128 characters. Connections refer to it by this name.
    pub name: String,
    /// The value.
    pub value: SecretValue,
    /// What the secret is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// What may be known about a secret: everything but its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// 1 when first set; increases on every replacement.
    pub version: i64,
    /// First set (RFC 3339).
    pub created_at: String,
    /// Last replaced (RFC 3339).
    pub updated_at: String,
}

/// A secret as stored.
pub(crate) struct SealedSecret {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) sealed: Vec<u8>,
    pub(crate) version: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl SealedSecret {
    pub(crate) fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            version: self.version,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

/// Checks a secret name (also used for references).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            "a secret name is 1–128 letters, digits, '_', '-' or '.'",
        ))
    }
}

pub(crate) fn bound(name: &str, value: &str) -> Vec<u8> {
    let mut plain = Vec::with_capacity(name.len() + 1 + value.len());
    plain.extend_from_slice(name.as_bytes());
    plain.push(0);
    plain.extend_from_slice(value.as_bytes());
    plain
}

impl Tools {
    /// Stores `req.value` sealed under `req.name`, replacing any earlier value.
    pub async fn set_secret(&self, req: NewSecret) -> Result<SecretInfo> {
        check_name(&req.name)?;
        let value = req.value.expose();
        if value.is_empty() || value.len() > MAX_VALUE_BYTES {
            return Err(Error::invalid(
                "value",
                format!("a secret is 1–{MAX_VALUE_BYTES} bytes"),
            ));
        }
        if let Some(d) = &req.description
            && d.len() > 1024
        {
            return Err(Error::invalid("description", "at most 1024 bytes"));
        }
        let sealed = self.config().master_key.seal(&bound(&req.name, value));
        let now = self.now();
        let info = store::put_secret(self.store(), req.name.clone(), req.description, sealed, now).await?;
        // A connection that injects this secret at connect time must reconnect.
        self.inner
            .live
            .invalidate_using_secret(&req.name, &self.inner.catalog)
            .await;
        self.inner.tokens.forget_using_secret(&req.name);
        Ok(info)
    }

    /// Every secret's name and metadata, by name; never a value.
    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        Ok(store::secrets(self.store())
            .await?
            .iter()
            .map(SealedSecret::info)
            .collect())
    }

    /// Deletes a secret no connection refers to (`secret_in_use` otherwise).
    pub async fn remove_secret(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let users = self.inner.catalog.connections_using_secret(name);
        if !users.is_empty() {
            return Err(Error::new(
                ErrorCode::SecretInUse,
                format!(
                    "secret '{name}' is referenced by connection(s) {}",
                    users.join(", ")
                ),
            ));
        }
        if !store::delete_secret(self.store(), name.to_string()).await? {
            return Err(Error::not_found("secret", name));
        }
        Ok(())
    }

    /// The value of `name`, for injection into an upstream request.
    pub(crate) async fn reveal(&self, name: &str) -> Result<SecretValue> {
        let Some(s) = store::secret(self.store(), name).await? else {
            return Err(Error::new(
                ErrorCode::UnknownSecret,
                format!("secret '{name}' is not in the vault"),
            ));
        };
        let plain = self
            .config()
            .master_key
            .open(&s.sealed)
            .map_err(|e| Error::internal(format!("secret '{name}': {e}")))?;
        let prefix = bound(name, "");
        let value = plain
            .strip_prefix(prefix.as_slice())
            .ok_or_else(|| Error::internal(format!("secret '{name}' was sealed for another name")))?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| Error::internal(format!("secret '{name}' is not UTF-8")))?;
        Ok(SecretValue(value))
    }

    /// Whether the vault holds `name`.
    pub(crate) async fn has_secret(&self, name: &str) -> Result<bool> {
        Ok(store::secret(self.store(), name).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_value_prints_as_a_placeholder() {
        let v = SecretValue::new("hunter2");
        assert_eq!(format!("{v:?}"), "SecretValue(…)");
        let req: NewSecret =
            serde_json::from_value(serde_json::json!({"name": "k", "value": "hunter2"})).unwrap();
        assert!(!format!("{req:?}").contains("hunter2"));
    }

    #[test]
    fn secret_names_are_restricted() {
        assert!(check_name("GITHUB_TOKEN").is_ok());
        assert!(check_name("a.b-c").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("${x}").is_err());
    }
}
