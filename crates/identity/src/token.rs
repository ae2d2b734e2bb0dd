//! Bearer tokens: scoped, expiring, revocable, and stored only as SHA-256 hashes.
//!
//! A token is `stk_` followed by 32 random bytes in base64url: enough entropy that
//! a fast hash is the right way to store it (a slow password hash would only cost
//! every request time). The plaintext is shown once, at creation.

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::{Error, ErrorCode, Id, Principal, Result, time::rfc3339};
use strata_store::Conn;

use crate::{Identity, db};

/// Default lifetime of agent tokens: 90 days.
pub const DEFAULT_TTL_SECS: u64 = 90 * 24 * 3600;
/// The longest lifetime a token may ask for: 10 years.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A request for a token.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Syscall name patterns the token allows: `*`, `agent.*`, `agent.get` (default `["*"]`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Lifetime in seconds (default 90 days, at most 10 years).
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// A label for the token, e.g. where it is used.
    #[serde(default)]
    pub name: Option<String>,
}

/// A newly created token (the plaintext is shown only here).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TokenCreated {
    /// `tok_…`, for revoking it.
    pub id: String,
    /// The bearer token.
    pub token: String,
    /// The agent it acts for; absent for admin tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it expires (RFC 3339), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// What is known about a token, without its secret.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TokenInfo {
    /// `tok_…`
    pub id: String,
    /// The agent it acts for; absent for admin tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A token ready to insert.
#[derive(Debug)]
pub struct PreparedToken {
    id: String,
    plain: String,
    hash: String,
    agent_id: Option<String>,
    admin: bool,
    name: String,
    scopes: Vec<String>,
    created_at: i64,
    expires_at: Option<i64>,
}

/// SHA-256 of a token's plaintext, as stored.
pub fn hash(plain: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(plain.as_bytes()))
}

fn fresh_plain() -> String {
    let bytes: [u8; 32] = strata_core::secret::random_bytes();
    format!(
        "stk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Validates a token request for `agent_id` (None: an admin token) and makes its secret.
pub fn prepare(agent_id: Option<&str>, req: NewToken, now: i64) -> Result<PreparedToken> {
    let scopes = req.scopes.unwrap_or_else(|| vec!["*".into()]);
    if scopes.is_empty() || scopes.len() > 64 {
        return Err(Error::invalid("scopes", "give 1 to 64 scopes"));
    }
    let ttl = req.expires_in.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(Error::invalid(
            "expires_in",
            format!("must be between 1 and {MAX_TTL_SECS} seconds"),
        ));
    }
    let name = req.name.unwrap_or_default();
    check_token_name(&name)?;
    let plain = fresh_plain();
    Ok(PreparedToken {
        id: Id::new("tok").to_string(),
        hash: hash(&plain),
        plain,
        agent_id: agent_id.map(str::to_string),
        admin: false,
        name,
        scopes,
        created_at: now,
        expires_at: Some(now + (ttl as i64) * 1000),
    })
}

fn check_token_name(name: &str) -> Result<()> {
    if name.chars().count() > 128 {
        return Err(Error::invalid("name", "at most 128 characters"));
    }
    Ok(())
}

/// An operator token with every scope and no expiry.
pub fn prepare_admin(name: &str, now: i64) -> Result<PreparedToken> {
    check_token_name(name)?;
    let plain = fresh_plain();
    Ok(PreparedToken {
        id: Id::new("tok").to_string(),
        hash: hash(&plain),
        plain,
        agent_id: None,
        admin: true,
        name: name.to_string(),
        scopes: vec!["*".into()],
        created_at: now,
        expires_at: None,
    })
}

impl PreparedToken {
    /// The scopes the token will carry.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The id the token will have.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plaintext (for handing to its holder before it is committed).
    pub fn plain(&self) -> &str {
        &self.plain
    }
}

/// Inserts a prepared token (inside the writer). An agent token is refused when
/// its agent is not live at this point of the write order, so a token can never
/// outlive a concurrent deletion of its agent.
pub async fn insert(conn: &mut Conn, t: PreparedToken) -> Result<TokenCreated> {
    if let Some(agent) = &t.agent_id {
        let live = sqlx::query("SELECT 1 FROM id_agents WHERE id = $1 AND deleted_at IS NULL")
            .bind(agent)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        if live.is_none() {
            return Err(Error::not_found("agent", agent));
        }
    }
    sqlx::query(
        "INSERT INTO id_tokens (id, hash, agent_id, admin, name, scopes, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&t.id)
    .bind(&t.hash)
    .bind(&t.agent_id)
    .bind(i64::from(t.admin))
    .bind(&t.name)
    .bind(serde_json::to_string(&t.scopes).map_err(Error::internal)?)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(TokenCreated {
        id: t.id,
        token: t.plain,
        agent_id: t.agent_id,
        scopes: t.scopes,
        expires_at: t.expires_at.map(rfc3339),
    })
}

/// Revokes token `id` (inside the writer). Revoking twice is not an error.
pub async fn revoke(conn: &mut Conn, id: &str, now: i64) -> Result<()> {
    let done = sqlx::query("UPDATE id_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("token", id));
    }
    Ok(())
}

/// A verified token: who it speaks for and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The principal.
    pub principal: Principal,
    /// Expiry (epoch ms), if any.
    pub expires_at: Option<i64>,
}

impl Identity {
    /// Resolves a bearer token to its principal, or says why it is refused.
    pub async fn authenticate(&self, plain: &str) -> Result<Verified> {
        let row = sqlx::query(
            "SELECT id, agent_id, admin, scopes, expires_at, revoked_at FROM id_tokens WHERE hash = $1",
        )
        .bind(hash(plain))
        .fetch_optional(self.store.pool())
        .await
        .map_err(db)?;
        let Some(r) = row else {
            return Err(Error::new(
                ErrorCode::Unauthenticated,
                "the bearer token is not known",
            ));
        };
        let token_id: String = r.try_get(0).map_err(db)?;
        if r.try_get::<Option<i64>, _>(5).map_err(db)?.is_some() {
            return Err(Error::new(
                ErrorCode::TokenRevoked,
                format!("token {token_id} was revoked"),
            ));
        }
        let expires_at: Option<i64> = r.try_get(4).map_err(db)?;
        if expires_at.is_some_and(|t| t <= self.now()) {
            return Err(Error::new(
                ErrorCode::TokenExpired,
                format!("token {token_id} has expired"),
            ));
        }
        let principal = if r.try_get::<i64, _>(2).map_err(db)? == 1 {
            Principal::Admin { token_id }
        } else {
            let scopes: String = r.try_get(3).map_err(db)?;
            Principal::Agent {
                agent_id: r
                    .try_get::<Option<String>, _>(1)
                    .map_err(db)?
                    .ok_or_else(|| Error::internal("agent token without an agent"))?,
                token_id,
                scopes: serde_json::from_str(&scopes).map_err(Error::internal)?,
            }
        };
        Ok(Verified {
            principal,
            expires_at,
        })
    }

    /// Who a token belongs to, for authorising its revocation.
    pub async fn token_info(&self, id: &str) -> Result<TokenInfo> {
        let row = sqlx::query("SELECT id, agent_id, revoked_at FROM id_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(self.store.pool())
            .await
            .map_err(db)?
            .ok_or_else(|| Error::not_found("token", id))?;
        Ok(TokenInfo {
            id: row.try_get(0).map_err(db)?,
            agent_id: row.try_get(1).map_err(db)?,
            revoked: row.try_get::<Option<i64>, _>(2).map_err(db)?.is_some(),
        })
    }

    /// Whether any live admin token exists.
    pub async fn has_admin_token(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM id_tokens WHERE admin = $1 AND revoked_at IS NULL")
            .bind(1_i64)
            .fetch_one(self.store.pool())
            .await
            .map_err(db)?;
        Ok(row.try_get::<i64, _>(0).map_err(db)? > 0)
    }
}
