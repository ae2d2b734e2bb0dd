//! Managed agents: the desired state of a fleet, as applied with `strata apply`.
//!
//! A deployment (`kind: Agent` in a manifest) names a command Strata runs as
//! `replicas` processes, each registered as its own agent (`NAME-0`, `NAME-1`, …)
//! with the deployment's capabilities, its own token and `STRATA_URL` in its
//! environment. This module stores and checks the desired state; the kernel's
//! reconciler makes the running processes match it.
//!
//! Each replica runs in a sandbox of its own unless the spec says
//! `sandbox: false` ([`Deployment::sandbox`]): by default with `host-egress`
//! networking (it must reach `STRATA_URL` on the host's loopback) and its
//! `workdir` bound read-only at the same path, where it starts.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::{Error, Result, time::rfc3339};
use strata_identity::Capability;
use strata_store::Conn;

use crate::{Orchestrator, db};

/// When a replica's process is started again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Restart {
    /// Whatever its exit status (the default).
    #[default]
    Always,
    /// Only when it exits with a failure.
    OnFailure,
    /// Never.
    Never,
}

/// Liveness of a replica, judged from its calls to Strata.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Restart a replica that has made no call for this long (e.g. `30s`); none by default.
    #[serde(default)]
    pub heartbeat_timeout: Option<String>,
}

/// Replicas following the queue depth of the deployment's capabilities.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Fewest replicas (0 allowed).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Queued tasks each replica should have ahead of it.
    pub target_queue_per_replica: u32,
}

/// The network of a replica's sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentNetwork {
    /// The host's network, loopback included, where `STRATA_URL` points (the default).
    #[default]
    HostEgress,
    /// No network at all (only for agents that reach Strata some other way).
    None,
}

/// How a replica's sandbox is made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSandbox {
    /// A sandbox template to start from (its limits, env, binds and network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Sandbox limits (`memory_bytes`, `cpu_millis`, `pids`, `workspace_bytes`,
    /// `tmp_bytes`, `open_files`, as for `sandbox.run`), checked by the kernel.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// `host-egress` (default) or `none`.
    #[serde(default)]
    pub network: AgentNetwork,
    /// Host paths bound read-only at the same place, besides `workdir` (and
    /// the command's folder when it is a path outside it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
}

/// The `sandbox` field: `false` (a plain child process), `true` (a sandbox
/// with the defaults) or the sandbox's settings.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Sandboxing {
    /// `true` or `false`.
    Enabled(bool),
    /// A sandbox with these settings.
    With(AgentSandbox),
}

impl<'de> Deserialize<'de> for Sandboxing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        // Through a value, so a bad field of the settings is named in the error.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(b) => Ok(Sandboxing::Enabled(b)),
            v @ serde_json::Value::Object(_) => serde_json::from_value(v)
                .map(Sandboxing::With)
                .map_err(|e| D::Error::custom(format!("sandbox: {e}"))),
            _ => Err(D::Error::custom(
                "sandbox: expected false, true or {template, limits, network, binds}",
            )),
        }
    }
}

/// A deployment of managed agents, as applied.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Its name (letters, digits, `-`; at most 48); replicas are `NAME-0`, `NAME-1`, ….
    pub name: String,
    /// The program to run.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (Strata adds `STRATA_URL`, `STRATA_TOKEN`, `STRATA_AGENT_ID`,
    /// `STRATA_AGENT_NAME` and `STRATA_REPLICA`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The folder it runs in (absolute; `strata apply` fills in the manifest's folder).
    #[serde(default)]
    pub workdir: Option<String>,
    /// How many processes to run (default 1; ignored under `autoscale`).
    #[serde(default = "one")]
    pub replicas: u32,
    /// When to start an exited process again.
    #[serde(default)]
    pub restart: Restart,
    /// Liveness check.
    #[serde(default)]
    pub health: Option<Health>,
    /// Scale on queue depth instead of a fixed count.
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
    /// The capabilities every replica declares.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Labels every replica's agent carries.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where replicas run: in a sandbox each (absent or `true`: the defaults;
    /// or its settings), or `false` for plain child processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandboxing>,
}

fn one() -> u32 {
    1
}

/// A stored deployment with its version.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Applied {
    /// The desired state.
    pub spec: Deployment,
    /// Bumped on every change of the spec.
    pub generation: i64,
    /// First applied (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
}

impl Deployment {
    /// The sandbox replicas run in; `None` for plain child processes.
    pub fn sandbox(&self) -> Option<AgentSandbox> {
        match &self.sandbox {
            None | Some(Sandboxing::Enabled(true)) => Some(AgentSandbox::default()),
            Some(Sandboxing::Enabled(false)) => None,
            Some(Sandboxing::With(s)) => Some(s.clone()),
        }
    }

    /// Checks the spec's fields.
    pub fn check(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(Error::invalid(
                "name",
                "1 to 48 letters, digits or '-', not starting with '-'",
            ));
        }
        if self.command.is_empty() {
            return Err(Error::invalid("command", "must not be empty"));
        }
        if self.replicas > 64 {
            return Err(Error::invalid("replicas", "at most 64"));
        }
        if let Some(a) = &self.autoscale
            && (a.min > a.max || a.max == 0 || a.max > 64 || a.target_queue_per_replica == 0)
        {
            return Err(Error::invalid(
                "autoscale",
                "needs min <= max, 1 <= max <= 64 and target_queue_per_replica >= 1",
            ));
        }
        if let Some(w) = &self.workdir
            && !w.starts_with('/')
        {
            return Err(Error::invalid("workdir", "must be an absolute path"));
        }
        self.heartbeat_timeout_ms()?;
        if let Some(s) = self.sandbox() {
            if s.template.as_deref().is_some_and(str::is_empty) {
                return Err(Error::invalid("sandbox.template", "must not be empty"));
            }
            for b in &s.binds {
                let p = std::path::Path::new(b);
                let plain = p.is_absolute()
                    && p.components().all(|c| {
                        matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))
                    })
                    && b != "/"
                    && !b.contains('\0');
                if !plain {
                    return Err(Error::invalid(
                        "sandbox.binds",
                        format!("'{b}' must be an absolute path other than / without '..'"),
                    ));
                }
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.starts_with("STRATA_") {
                return Err(Error::invalid(
                    "env",
                    format!("'{k}' is not allowed (empty, has '=', or is a STRATA_ variable)"),
                ));
            }
        }
        Ok(())
    }

    /// The liveness timeout in ms, if set.
    pub fn heartbeat_timeout_ms(&self) -> Result<Option<i64>> {
        let Some(t) = self.health.as_ref().and_then(|h| h.heartbeat_timeout.as_deref()) else {
            return Ok(None);
        };
        let d = humantime::parse_duration(t)
            .map_err(|e| Error::invalid("health.heartbeat_timeout", format!("not a duration: {e}")))?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if !(1_000..=3_600_000).contains(&ms) {
            return Err(Error::invalid("health.heartbeat_timeout", "must be 1s to 1h"));
        }
        Ok(Some(ms))
    }
}

impl Orchestrator {
    /// Every deployment, by name.
    pub async fn deployments(&self) -> Result<Vec<Applied>> {
        let rows =
            sqlx::query("SELECT spec, generation, created_at, updated_at FROM orc_fleet ORDER BY name")
                .fetch_all(self.store.pool())
                .await
                .map_err(db)?;
        rows.iter().map(read).collect()
    }

    /// One deployment.
    pub async fn deployment(&self, name: &str) -> Result<Applied> {
        let row =
            sqlx::query("SELECT spec, generation, created_at, updated_at FROM orc_fleet WHERE name = $1")
                .bind(name)
                .fetch_optional(self.store.pool())
                .await
                .map_err(db)?
                .ok_or_else(|| Error::not_found("deployment", name))?;
        read(&row)
    }

    /// Queued tasks needing any of `capabilities` (for autoscaling).
    pub async fn queue_depth(&self, capabilities: &[String]) -> Result<i64> {
        if capabilities.is_empty() {
            return Ok(0);
        }
        let marks: Vec<String> = (1..=capabilities.len()).map(|i| format!("${i}")).collect();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM orc_tasks WHERE state = 'queued' AND capability IN ({})",
            marks.join(", ")
        )));
        for c in capabilities {
            q = q.bind(c.clone());
        }
        q.fetch_one(self.store.pool())
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)
    }
}

fn read(r: &sqlx::any::AnyRow) -> Result<Applied> {
    let spec: String = r.try_get(0).map_err(db)?;
    Ok(Applied {
        spec: serde_json::from_str(&spec).map_err(|e| Error::internal(format!("deployment spec: {e}")))?,
        generation: r.try_get(1).map_err(db)?,
        created_at: rfc3339(r.try_get(2).map_err(db)?),
        updated_at: rfc3339(r.try_get(3).map_err(db)?),
    })
}

/// Stores a checked deployment; the generation moves only when the spec changed
/// (inside the writer). Returns the stored generation.
pub async fn apply(conn: &mut Conn, d: &Deployment, now: i64) -> Result<i64> {
    let spec = serde_json::to_string(d).map_err(Error::internal)?;
    let row = sqlx::query(
        "INSERT INTO orc_fleet (name, spec, generation, created_at, updated_at) VALUES ($1, $2, 1, $3, $3)
         ON CONFLICT (name) DO UPDATE SET
            generation = CASE WHEN orc_fleet.spec = excluded.spec THEN orc_fleet.generation ELSE orc_fleet.generation + 1 END,
            updated_at = CASE WHEN orc_fleet.spec = excluded.spec THEN orc_fleet.updated_at ELSE excluded.updated_at END,
            spec = excluded.spec
         RETURNING generation",
    )
    .bind(&d.name)
    .bind(spec)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    row.try_get(0).map_err(db)
}

/// Removes a deployment; the reconciler then stops its replicas (inside the writer).
pub async fn remove(conn: &mut Conn, name: &str) -> Result<()> {
    let done = sqlx::query("DELETE FROM orc_fleet WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("deployment", name));
    }
    Ok(())
}

/// The fleet table.
pub(crate) const SCHEMA: &str = "
CREATE TABLE orc_fleet (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sandbox: serde_json::Value) -> std::result::Result<Deployment, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"name": "a", "command": "sh", "sandbox": sandbox}))
    }

    #[test]
    fn replicas_are_sandboxed_unless_the_spec_says_false() {
        let absent: Deployment =
            serde_json::from_value(serde_json::json!({"name": "a", "command": "sh"})).expect("parsed");
        assert_eq!(absent.sandbox(), Some(AgentSandbox::default()));
        assert_eq!(
            absent.sandbox().map(|s| s.network),
            Some(AgentNetwork::HostEgress)
        );
        // An old spec without the field is stored as before (same generation).
        assert!(!serde_json::to_string(&absent).expect("json").contains("sandbox"));
        assert_eq!(
            parse(serde_json::json!(true)).expect("parsed").sandbox(),
            Some(AgentSandbox::default())
        );
        assert_eq!(parse(serde_json::json!(false)).expect("parsed").sandbox(), None);
        let with = parse(serde_json::json!({"template": "py", "network": "none", "binds": ["/opt/x"]}))
            .expect("parsed");
        let sb = with.sandbox().expect("sandboxed");
        assert_eq!(sb.template.as_deref(), Some("py"));
        assert_eq!(sb.network, AgentNetwork::None);
        assert_eq!(sb.binds, ["/opt/x"]);
        with.check().expect("valid");
        let stored = serde_json::to_value(&with).expect("json");
        assert_eq!(stored["sandbox"]["network"], "none");
        assert_eq!(stored["sandbox"]["binds"][0], "/opt/x");
    }

    #[test]
    fn bad_sandbox_settings_are_refused_with_the_field_named() {
        let e = parse(serde_json::json!({"bindz": []})).expect_err("refused");
        assert!(e.to_string().contains("bindz"), "{e}");
        let e = parse(serde_json::json!("yes")).expect_err("refused");
        assert!(e.to_string().contains("expected false, true"), "{e}");
        let e = parse(serde_json::json!({"network": "everywhere"})).expect_err("refused");
        assert!(e.to_string().contains("everywhere"), "{e}");
        for bad in ["relative", "/", "/a/../b", ""] {
            let d = parse(serde_json::json!({"binds": [bad]})).expect("parsed");
            let e = d.check().expect_err(bad);
            assert!(e.detail.contains("sandbox.binds"), "{bad}: {e}");
        }
        let d = parse(serde_json::json!({"template": ""})).expect("parsed");
        assert!(d.check().is_err());
    }
}
