//! Agents: a name, an Ed25519 identity, a capability manifest and labels.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use ed25519_dalek::SigningKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};
use strata_store::Conn;

use crate::token::{self, NewToken, PreparedToken, TokenCreated};
use crate::{Identity, Page, db};

/// One thing an agent can do, with the schemas of its input and output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// Capability name, e.g. `summarize` (letters, digits, `._-`; at most 64).
    pub name: String,
    /// Version of the capability's contract.
    #[serde(default = "default_version")]
    pub version: String,
    /// What it does, for routing and for humans.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the input this capability accepts.
    #[serde(default = "any_schema")]
    pub input_schema: serde_json::Value,
    /// JSON Schema of the output it produces.
    #[serde(default = "any_schema")]
    pub output_schema: serde_json::Value,
    /// How many tasks of this capability the agent runs at once (default 1); its
    /// load in discovery is tasks held / this.
    #[serde(default = "one")]
    pub max_concurrent: u32,
}

fn one() -> u32 {
    1
}

fn default_version() -> String {
    "1".into()
}

fn any_schema() -> serde_json::Value {
    serde_json::json!({})
}

/// A request to register an agent.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Unique among live agents; letters, digits, `._-`; at most 64.
    pub name: String,
    /// The capability manifest.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Free-form labels for selection and grants.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Return the private key once instead of keeping it server-side.
    #[serde(default)]
    pub hold_private_key: bool,
    /// Scopes and lifetime of the first token (default: all scopes, 90 days).
    #[serde(default)]
    pub token: Option<NewToken>,
}

/// A registered agent.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct Agent {
    /// `agt_…`
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its decentralized identifier, `did:key:z…`.
    pub did: String,
    /// Ed25519 public key, base64url without padding.
    pub public_key: String,
    /// Whether Strata holds the private key (and can sign for it).
    pub key_held_by_server: bool,
    /// The capability manifest.
    pub capabilities: Vec<Capability>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was registered (RFC 3339).
    pub created_at: String,
}

/// A newly registered agent with its first token (shown once).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AgentCreated {
    /// The agent.
    #[serde(flatten)]
    pub agent: Agent,
    /// The first bearer token for the agent; it is not stored and cannot be shown again.
    pub token: String,
    /// The token's id, for revoking it.
    pub token_id: String,
    /// When the token expires (RFC 3339), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
    /// The Ed25519 private key seed (base64url), only when `hold_private_key` was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// Everything needed to insert an agent, computed outside the writer.
#[derive(Debug)]
pub struct PreparedAgent {
    agent: Agent,
    sealed_private_key: Option<String>,
    private_key: Option<String>,
    token: PreparedToken,
    now: i64,
}

impl PreparedAgent {
    /// The id the agent will have.
    pub fn id(&self) -> &str {
        &self.agent.id
    }
}

/// Checks a name: 1–64 of letters, digits, `.`, `_`, `-`.
pub(crate) fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(Error::invalid(field, "must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::invalid(
            field,
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

fn check(req: &NewAgent) -> Result<()> {
    check_name("name", &req.name)?;
    if req.capabilities.len() > 256 {
        return Err(Error::invalid("capabilities", "at most 256 capabilities"));
    }
    let mut seen = HashSet::new();
    for (i, c) in req.capabilities.iter().enumerate() {
        check_name(&format!("capabilities[{i}].name"), &c.name)?;
        if !seen.insert(&c.name) {
            return Err(Error::invalid(
                &format!("capabilities[{i}].name"),
                format!("'{}' is declared twice", c.name),
            ));
        }
        if c.max_concurrent == 0 || c.max_concurrent > 10_000 {
            return Err(Error::invalid(
                &format!("capabilities[{i}].max_concurrent"),
                "must be 1 to 10000",
            ));
        }
        if c.version.is_empty() || c.version.len() > 32 {
            return Err(Error::invalid(
                &format!("capabilities[{i}].version"),
                "must be 1 to 32 characters",
            ));
        }
        for (field, s) in [
            ("input_schema", &c.input_schema),
            ("output_schema", &c.output_schema),
        ] {
            if !(s.is_object() || s.is_boolean()) {
                return Err(Error::invalid(
                    &format!("capabilities[{i}].{field}"),
                    "a JSON Schema must be an object or a boolean",
                ));
            }
        }
    }
    if req.labels.len() > 64 {
        return Err(Error::invalid("labels", "at most 64 labels"));
    }
    for (k, v) in &req.labels {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(Error::invalid(
                &format!("labels.{k}"),
                "keys are 1–128 characters and values at most 256",
            ));
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, name, did, public_key, sealed_private_key, capabilities, labels, created_at";

fn read(r: &sqlx::any::AnyRow) -> Result<Agent> {
    let corrupt = |what: &str, e: serde_json::Error| Error::internal(format!("agent row {what}: {e}"));
    let caps: String = r.try_get(5).map_err(db)?;
    let labels: String = r.try_get(6).map_err(db)?;
    Ok(Agent {
        id: r.try_get(0).map_err(db)?,
        name: r.try_get(1).map_err(db)?,
        did: r.try_get(2).map_err(db)?,
        public_key: r.try_get(3).map_err(db)?,
        key_held_by_server: r.try_get::<Option<String>, _>(4).map_err(db)?.is_some(),
        capabilities: serde_json::from_str(&caps).map_err(|e| corrupt("capabilities", e))?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt("labels", e))?,
        created_at: rfc3339(r.try_get(7).map_err(db)?),
    })
}

impl Identity {
    /// Validates `req` and makes the agent's keys and first token.
    pub fn prepare_agent(&self, req: NewAgent) -> Result<PreparedAgent> {
        check(&req)?;
        let now = self.now();
        let id = Id::new("agt").to_string();
        let seed: [u8; 32] = strata_core::secret::random_bytes();
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (sealed_private_key, private_key) = if req.hold_private_key {
            (None, Some(b64.encode(seed)))
        } else {
            (Some(hex::encode(self.master_key.seal(&seed))), None)
        };
        let token =
            token::prepare(Some(&id), req.token.unwrap_or_default(), now).map_err(|e| match e.code {
                ErrorCode::InvalidRequest => Error::new(e.code, format!("token.{}", e.detail)),
                _ => e,
            })?;
        Ok(PreparedAgent {
            agent: Agent {
                did: crate::did::did_key(&public),
                public_key: b64.encode(public),
                key_held_by_server: sealed_private_key.is_some(),
                id,
                name: req.name,
                capabilities: req.capabilities,
                labels: req.labels,
                created_at: rfc3339(now),
            },
            sealed_private_key,
            private_key,
            token,
            now,
        })
    }

    /// The signing key of an agent whose key the server holds.
    pub async fn signing_key(&self, id: &str) -> Result<Option<SigningKey>> {
        let row =
            sqlx::query("SELECT sealed_private_key FROM id_agents WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(self.store.pool())
                .await
                .map_err(db)?;
        let Some(sealed) = row
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()
            .map_err(db)?
            .flatten()
        else {
            return Ok(None);
        };
        let bytes = hex::decode(sealed).map_err(Error::internal)?;
        let seed = self.master_key.open(&bytes).map_err(Error::internal)?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Error::internal("private key is not 32 bytes"))?;
        Ok(Some(SigningKey::from_bytes(&seed)))
    }

    /// Fetches a live agent.
    pub async fn get(&self, id: &str) -> Result<Agent> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM id_agents WHERE id = $1 AND deleted_at IS NULL"
        )))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(db)?;
        match row {
            Some(r) => read(&r),
            None => Err(Error::not_found("agent", id)),
        }
    }

    /// The live agent named `name`, if any.
    pub async fn by_name(&self, name: &str) -> Result<Option<Agent>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM id_agents WHERE name = $1 AND deleted_at IS NULL"
        )))
        .bind(name)
        .fetch_optional(self.store.pool())
        .await
        .map_err(db)?;
        row.as_ref().map(read).transpose()
    }

    /// Lists live agents in creation order, `limit` at a time after cursor `after`.
    pub async fn list(&self, after: Option<&str>, limit: u32) -> Result<Page<Agent>> {
        let limit = i64::from(limit.clamp(1, 500));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM id_agents WHERE deleted_at IS NULL AND id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after.unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        let items = rows.iter().map(read).collect::<Result<Vec<_>>>()?;
        let (items, next) = strata_core::page::split(items, limit, |a| a.id.clone());
        Ok(Page { items, next })
    }
}

/// Inserts a prepared agent and its first token (inside the writer).
pub async fn insert(conn: &mut Conn, p: PreparedAgent) -> Result<AgentCreated> {
    let a = &p.agent;
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO id_agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(&a.id)
    .bind(&a.name)
    .bind(&a.did)
    .bind(&a.public_key)
    .bind(&p.sealed_private_key)
    .bind(serde_json::to_string(&a.capabilities).map_err(Error::internal)?)
    .bind(serde_json::to_string(&a.labels).map_err(Error::internal)?)
    .bind(p.now)
    .execute(&mut *conn)
    .await;
    if let Err(e) = inserted {
        let e = strata_store::Error::from(e);
        if e.is_unique_violation() {
            return Err(Error::new(
                ErrorCode::AgentNameTaken,
                format!("an agent named '{}' already exists", a.name),
            ));
        }
        return Err(e.into());
    }
    let TokenCreated {
        token,
        id: token_id,
        expires_at,
        ..
    } = token::insert(conn, p.token).await?;
    for c in &a.capabilities {
        sqlx::query(
            "INSERT INTO id_capabilities (agent_id, name, version, input_schema, output_schema, max_concurrent)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&a.id)
        .bind(&c.name)
        .bind(&c.version)
        .bind(c.input_schema.to_string())
        .bind(c.output_schema.to_string())
        .bind(i64::from(c.max_concurrent))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(AgentCreated {
        agent: p.agent,
        token,
        token_id,
        token_expires_at: expires_at,
        private_key: p.private_key,
    })
}

/// Marks agent `id` deleted and revokes its tokens (inside the writer). History is
/// kept: the row stays, invisible to reads, and its name becomes free.
pub async fn delete(conn: &mut Conn, id: &str, now: i64) -> Result<()> {
    let done = sqlx::query("UPDATE id_agents SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("agent", id));
    }
    sqlx::query("UPDATE id_tokens SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    sqlx::query("DELETE FROM id_capabilities WHERE agent_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// A capability as some live agent declares it.
#[derive(Debug, Clone)]
pub struct Declared {
    /// The declaring agent.
    pub agent_id: String,
    /// The capability.
    pub capability: Capability,
}

fn declared(r: &sqlx::any::AnyRow) -> Result<Declared> {
    let schema = |i: usize| -> Result<serde_json::Value> {
        let s: String = r.try_get(i).map_err(db)?;
        serde_json::from_str(&s).map_err(|e| Error::internal(format!("capability schema: {e}")))
    };
    Ok(Declared {
        agent_id: r.try_get(0).map_err(db)?,
        capability: Capability {
            name: r.try_get(1).map_err(db)?,
            version: r.try_get(2).map_err(db)?,
            description: String::new(),
            input_schema: schema(3)?,
            output_schema: schema(4)?,
            max_concurrent: u32::try_from(r.try_get::<i64, _>(5).map_err(db)?).unwrap_or(1),
        },
    })
}

impl Identity {
    /// Every live agent's declaration of capability `name`, newest agent first.
    pub async fn declarations(&self, name: &str) -> Result<Vec<Declared>> {
        let rows = sqlx::query(
            "SELECT agent_id, name, version, input_schema, output_schema, max_concurrent FROM id_capabilities WHERE name = $1 ORDER BY agent_id DESC",
        )
        .bind(name)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        rows.iter().map(declared).collect()
    }

    /// The capabilities a live agent declares.
    pub async fn capabilities_of(&self, agent_id: &str) -> Result<Vec<Capability>> {
        let rows = sqlx::query(
            "SELECT agent_id, name, version, input_schema, output_schema, max_concurrent FROM id_capabilities WHERE agent_id = $1 ORDER BY name",
        )
        .bind(agent_id)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        rows.iter().map(|r| declared(r).map(|d| d.capability)).collect()
    }
}

/// The live agents declaring capability `name`, read on `conn` (inside the writer).
pub async fn declarers(conn: &mut strata_store::Conn, name: &str) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT agent_id FROM id_capabilities WHERE name = $1")
        .bind(name)
        .fetch_all(conn)
        .await
        .map_err(db)?;
    rows.iter().map(|r| r.try_get(0).map_err(db)).collect()
}

/// The label that puts an agent in a group (supervision policies can target one).
pub const GROUP_LABEL: &str = "strata.group";

/// The group of agent `id` (its `strata.group` label), read on `conn` (inside the
/// writer). Deleted agents keep theirs: a task that outlived its agent is still
/// supervised as that agent's group's.
pub async fn group_of(conn: &mut strata_store::Conn, id: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT labels FROM id_agents WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(db)?;
    let Some(row) = row else { return Ok(None) };
    let labels: String = row.try_get(0).map_err(db)?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| Error::internal(format!("agent row labels: {e}")))?;
    Ok(labels.get(GROUP_LABEL).cloned())
}

/// The input schema of capability `name` as its newest live declarer declares it,
/// read on `conn` (inside the writer); `None` when no live agent declares it.
pub async fn input_schema_of(conn: &mut strata_store::Conn, name: &str) -> Result<Option<serde_json::Value>> {
    let row = sqlx::query(
        "SELECT input_schema FROM id_capabilities WHERE name = $1 ORDER BY agent_id DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
    .map_err(db)?;
    row.map(|r| {
        let s: String = r.try_get(0).map_err(db)?;
        serde_json::from_str(&s).map_err(|e| Error::internal(format!("capability schema: {e}")))
    })
    .transpose()
}
