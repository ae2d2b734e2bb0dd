//! Templates: named base configurations that runs and sandboxes start from.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Error, ErrorCode, Result};

use crate::{Backend, Compute, Limits, Network, repo};

/// A named base configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Its name (letters, digits, `-`, `_`, `.`; at most 64).
    pub name: String,
    /// Limits a run or sandbox starts from (the request's own override them).
    #[serde(default)]
    pub limits: Limits,
    /// Environment under the request's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra host paths bound read-only at the same place (absolute, existing).
    #[serde(default)]
    pub ro_binds: Vec<String>,
    /// Network of runs that do not ask for one (still subject to the grant).
    #[serde(default)]
    pub network: Network,
    /// Backend of runs and sandboxes that do not ask for one (default
    /// `process`). The wasm backend ignores `ro_binds`: a module sees only
    /// `/workspace`.
    #[serde(default)]
    pub backend: Backend,
    /// Commands run once in a new persistent sandbox, in order (not for ephemeral runs).
    #[serde(default)]
    pub setup: Vec<Vec<String>>,
}

/// Host folders a template may never bind, nor anything under them: they
/// would hand a sandbox the host's secrets or kernel interfaces.
const FORBIDDEN_BINDS: &[&str] = &["/proc", "/sys", "/dev", "/etc", "/root", "/home", "/run", "/boot"];

impl Template {
    /// Checks the fields.
    pub fn check(&self) -> Result<()> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(Error::invalid("name", "1 to 64 letters, digits, '-', '_' or '.'"));
        }
        for b in &self.ro_binds {
            let p = std::path::Path::new(b);
            let normal = p.is_absolute()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
            if !normal {
                return Err(Error::invalid(
                    "ro_binds",
                    format!("'{b}' must be an absolute path without '..'"),
                ));
            }
            let s = b.trim_end_matches('/');
            let under = |f: &&str| s == *f || s.starts_with(&format!("{f}/"));
            if s.is_empty() || s == "/var" || FORBIDDEN_BINDS.iter().any(under) {
                return Err(Error::invalid(
                    "ro_binds",
                    format!("'{b}' may not be bound into a sandbox"),
                ));
            }
            if !p.exists() {
                return Err(Error::invalid(
                    "ro_binds",
                    format!("'{b}' does not exist on this host"),
                ));
            }
        }
        for c in &self.setup {
            crate::exec::check_command(c)?;
        }
        self.backend.check_available()?;
        if self.backend == Backend::Wasm && self.network != Network::None {
            return Err(crate::exec::no_wasm_network());
        }
        crate::exec::environment([&self.env])?;
        Ok(())
    }
}

impl Compute {
    /// Creates or replaces a template.
    pub async fn put_template(&self, t: Template) -> Result<Template> {
        t.check()?;
        let cfg = self.config();
        crate::ResolvedLimits::resolve(&cfg.default_limits, &t.limits, &cfg.max_limits)?;
        repo::put_template(&self.inner.store, &t, self.now()).await?;
        Ok(t)
    }

    /// A template by name.
    pub async fn template(&self, name: &str) -> Result<Template> {
        repo::template(&self.inner.store, name).await?.ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownTemplate,
                format!("template '{name}' does not exist"),
            )
        })
    }

    /// Every template, by name.
    pub async fn templates(&self) -> Result<Vec<Template>> {
        repo::templates(&self.inner.store).await
    }

    /// Deletes a template (sandboxes made from it keep their configuration).
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        if repo::delete_template(&self.inner.store, name).await? {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::UnknownTemplate,
                format!("template '{name}' does not exist"),
            ))
        }
    }
}
