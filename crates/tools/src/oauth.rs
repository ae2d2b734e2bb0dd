//! OAuth 2 access tokens for a connection, kept fresh.
//!
//! A connection may declare `auth`: the **client-credentials** flow (client id
//! and a secret reference for the client secret) or the **refresh-token** flow
//! (a vault secret holding the refresh token; a rotated refresh token the
//! endpoint returns is written back to the vault). The gateway asks the token
//! endpoint (form-encoded, client secret in the body) when it has no token or
//! the one it has expires within 30 s, and sends `Authorization: Bearer …` to
//! the upstream. Tokens live in memory only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_core::{Error, ErrorCode, Result};

use crate::connection::Conn;
use crate::reference::{Scrubber, Template};
use crate::vault::SecretValue;
use crate::{Tools, store};

/// How a connection gets its access tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "flow", rename_all = "snake_case", deny_unknown_fields)]
pub enum OAuth {
    /// `grant_type=client_credentials`.
    ClientCredentials {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret: `{"secret": "NAME"}` or a string with `${secret:NAME}`.
        client_secret: Value,
        /// Space-separated scopes to ask for.
        #[serde(default)]
        scope: Option<String>,
    },
    /// `grant_type=refresh_token`.
    RefreshToken {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret, if the client has one.
        #[serde(default)]
        client_secret: Option<Value>,
        /// The name of the vault secret holding the refresh token.
        refresh_token: String,
        /// Space-separated scopes to ask for.
        #[serde(default)]
        scope: Option<String>,
    },
}

impl OAuth {
    /// The secret references the flow uses, parsed.
    pub(crate) fn templates(&self) -> Result<Vec<Template>> {
        Ok(match self {
            OAuth::ClientCredentials { client_secret, .. } => {
                vec![Template::parse("auth.client_secret", client_secret)?]
            }
            OAuth::RefreshToken {
                client_secret,
                refresh_token,
                ..
            } => {
                let mut v = vec![Template::parse(
                    "auth.refresh_token",
                    &serde_json::json!({ "secret": refresh_token }),
                )?];
                if let Some(s) = client_secret {
                    v.push(Template::parse("auth.client_secret", s)?);
                }
                v
            }
        })
    }

    fn token_url(&self) -> &str {
        match self {
            OAuth::ClientCredentials { token_url, .. } | OAuth::RefreshToken { token_url, .. } => token_url,
        }
    }
}

#[derive(Clone)]
struct Cached {
    token: SecretValue,
    expires_at: i64,
    secrets: Vec<String>,
}

/// Access tokens by connection id.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, Cached>>,
    refreshing: tokio::sync::Mutex<()>,
}

/// Refresh a token this long before it expires.
const EARLY_MS: i64 = 30_000;

impl TokenCache {
    fn fresh(&self, conn: &str, now: i64) -> Option<(SecretValue, i64)> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(conn)
            .filter(|c| now < c.expires_at - EARLY_MS)
            .map(|c| (c.token.clone(), c.expires_at))
    }

    /// Forgets tokens obtained with secret `name` (it was replaced).
    pub(crate) fn forget_using_secret(&self, name: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, c| !c.secrets.iter().any(|s| s == name));
    }

    /// Forgets the token of `conn`.
    pub(crate) fn forget(&self, conn: &str) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(conn);
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl Tools {
    /// A fresh access token for `conn` and when it expires, if the connection
    /// uses OAuth; its value is added to `scrub`.
    pub(crate) async fn access_token(
        &self,
        conn: &Conn,
        scrub: &mut Scrubber,
    ) -> Result<Option<(SecretValue, i64)>> {
        let Some(auth) = &conn.spec.auth else {
            return Ok(None);
        };
        let cache = &self.inner.tokens;
        if let Some(t) = cache.fresh(&conn.id, self.now()) {
            scrub.add(&t.0);
            return Ok(Some(t));
        }
        let _one = cache.refreshing.lock().await;
        if let Some(t) = cache.fresh(&conn.id, self.now()) {
            scrub.add(&t.0);
            return Ok(Some(t));
        }
        let mut values = BTreeMap::new();
        let mut used = Vec::new();
        for t in auth.templates()? {
            for name in t.secrets() {
                let v = self.reveal(name).await?;
                scrub.add(&v);
                values.insert(name.to_string(), v);
                used.push(name.to_string());
            }
        }
        let mut form: Vec<(&str, String)> = Vec::new();
        let (client_id, scope) = match auth {
            OAuth::ClientCredentials {
                client_id,
                client_secret,
                scope,
                ..
            } => {
                form.push(("grant_type", "client_credentials".into()));
                let secret = Template::parse("auth.client_secret", client_secret)?.render(&values)?;
                form.push(("client_secret", secret.expose().to_string()));
                (client_id, scope)
            }
            OAuth::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
                scope,
                ..
            } => {
                form.push(("grant_type", "refresh_token".into()));
                let rt = values.get(refresh_token).ok_or_else(|| {
                    Error::new(
                        ErrorCode::UnknownSecret,
                        format!("secret '{refresh_token}' is not in the vault"),
                    )
                })?;
                form.push(("refresh_token", rt.expose().to_string()));
                if let Some(s) = client_secret {
                    let secret = Template::parse("auth.client_secret", s)?.render(&values)?;
                    form.push(("client_secret", secret.expose().to_string()));
                }
                (client_id, scope)
            }
        };
        form.push(("client_id", client_id.clone()));
        if let Some(s) = scope {
            form.push(("scope", s.clone()));
        }
        let url = auth.token_url();
        let fail = |why: String| {
            Error::new(
                ErrorCode::UpstreamFailed,
                scrub.text(&format!("token endpoint {url}: {why}")),
            )
        };
        let resp = tokio::time::timeout(
            self.config().connect_timeout,
            self.inner.http.post(url).form(&form).send(),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::UpstreamTimeout,
                format!("token endpoint {url} did not answer in time"),
            )
        })?
        .map_err(|e| fail(crate::http_error(e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        if body.len() > 64 * 1024 {
            return Err(fail("the answer is over 64 KiB".into()));
        }
        if !(200..300).contains(&status) {
            // The standard error field only: the rest of the body may echo what was sent.
            let code = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            return Err(fail(format!("HTTP {status} {code}")));
        }
        let tr: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| fail("the answer is not a token response".into()))?;
        let token = SecretValue::new(tr.access_token);
        scrub.add(&token);
        if let (OAuth::RefreshToken { refresh_token, .. }, Some(new)) = (auth, tr.refresh_token) {
            // The endpoint rotated the refresh token: the old one may no longer work.
            let sealed_for = refresh_token.clone();
            let plain = crate::vault::bound(&sealed_for, &new);
            let sealed = self.config().master_key.seal(&plain);
            scrub.add(&SecretValue::new(new));
            store::replace_secret_value(self.store(), sealed_for, sealed, self.now()).await?;
        }
        let expires_at = self.now() + tr.expires_in.unwrap_or(3600).clamp(1, 86_400 * 365) * 1000;
        cache.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(
            conn.id.clone(),
            Cached {
                token: token.clone(),
                expires_at,
                secrets: used,
            },
        );
        Ok(Some((token, expires_at)))
    }
}
