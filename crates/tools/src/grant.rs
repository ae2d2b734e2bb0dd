//! Grants: which agents may list and call which tools.
//!
//! A grant names a subject — one agent by id, or every agent carrying a label
//! `key=value` — and a tool pattern: `*`, `github.*`, `github.create_issue`, or
//! any glob where `*` stands for any run of characters. Nothing is allowed
//! without a grant: an agent with none sees an empty catalog and every call is
//! `forbidden`. Grants are cached in memory and re-read by [`crate::Tools::reload`].

use std::sync::RwLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Error, Id, Result, time::rfc3339};

use crate::{Caller, Tools, store};

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Subject {
    /// One agent, by id (`agt_…`).
    Agent(String),
    /// Every agent whose labels hold `key` = `value`.
    Label {
        /// The label's key.
        key: String,
        /// The label's value.
        value: String,
    },
}

/// A request to grant tools.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// Who may use the tools.
    pub subject: Subject,
    /// Which tools: `*`, `connection.*`, `connection.tool`, or a glob.
    pub tools: String,
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Grant {
    /// `tgr_…`
    pub id: String,
    /// Who may use the tools.
    pub subject: Subject,
    /// Which tools.
    pub tools: String,
    /// Granted (RFC 3339).
    pub created_at: String,
}

impl Subject {
    fn covers(&self, caller: &Caller) -> bool {
        match (self, caller) {
            (_, Caller::Operator) => true,
            (Subject::Agent(a), Caller::Agent { id, .. }) => a == id,
            (Subject::Label { key, value }, Caller::Agent { labels, .. }) => labels.get(key) == Some(value),
        }
    }
}

/// Whether glob `pattern` matches `name` (`*` matches any run, including dots).
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    let (last, middle) = parts.split_last().expect("parts is not empty");
    for p in middle {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The grants, cached.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    all: RwLock<Vec<Grant>>,
}

impl Grants {
    /// Installs `grants`; whether they differ from the ones before.
    pub(crate) fn replace(&self, grants: Vec<Grant>) -> bool {
        let mut all = self.all.write().unwrap_or_else(|p| p.into_inner());
        let changed = *all != grants;
        *all = grants;
        changed
    }

    /// Whether `caller` may use `tool`.
    pub(crate) fn allows(&self, caller: &Caller, tool: &str) -> bool {
        if matches!(caller, Caller::Operator) {
            return true;
        }
        self.all
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|g| g.subject.covers(caller) && matches(&g.tools, tool))
    }
}

fn check(req: &NewGrant) -> Result<()> {
    let t = &req.tools;
    if t.is_empty() || t.len() > 256 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            "tools",
            "a tool pattern is 1–256 printable characters without spaces",
        ));
    }
    match &req.subject {
        Subject::Agent(a) => {
            Id::parse("agt", a).map_err(|e| Error::invalid("subject.agent", e))?;
        }
        Subject::Label { key, value } => {
            if key.is_empty() || key.len() > 128 || value.len() > 256 {
                return Err(Error::invalid(
                    "subject.label",
                    "a label key is 1–128 bytes and its value at most 256",
                ));
            }
        }
    }
    Ok(())
}

impl Tools {
    /// Lets `req.subject` list and call the tools `req.tools` matches.
    pub async fn grant(&self, req: NewGrant) -> Result<Grant> {
        check(&req)?;
        let g = Grant {
            id: Id::new("tgr").to_string(),
            subject: req.subject,
            tools: req.tools,
            created_at: rfc3339(self.now()),
        };
        store::insert_grant(self.store(), g.clone(), self.now()).await?;
        self.reload_grants().await?;
        Ok(g)
    }

    /// Every grant, oldest first.
    pub async fn list_grants(&self) -> Result<Vec<Grant>> {
        store::grants(self.store()).await
    }

    /// Withdraws a grant; calls already running finish.
    pub async fn revoke_grant(&self, id: &str) -> Result<()> {
        if !store::delete_grant(self.store(), id.to_string()).await? {
            return Err(Error::not_found("grant", id));
        }
        self.reload_grants().await
    }

    async fn reload_grants(&self) -> Result<()> {
        let grants = store::grants(self.store()).await?;
        if self.inner.grants.replace(grants) {
            self.inner.catalog.announce();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn patterns_match_whole_names() {
        assert!(matches("*", "a.b"));
        assert!(matches("fs.*", "fs.read_file"));
        assert!(!matches("fs.*", "fsx.read_file"));
        assert!(matches("fs.read_file", "fs.read_file"));
        assert!(!matches("fs.read", "fs.read_file"));
        assert!(matches("*.read_*", "fs.read_file"));
        assert!(!matches("*.read_*", "fs.write_file"));
        assert!(matches("a*a", "aa"));
        assert!(!matches("a*a", "a"));
    }

    #[test]
    fn grants_match_by_agent_id_or_label() {
        let g = Grants::default();
        g.replace(vec![
            Grant {
                id: "tgr_1".into(),
                subject: Subject::Agent("agt_1".into()),
                tools: "fs.*".into(),
                created_at: String::new(),
            },
            Grant {
                id: "tgr_2".into(),
                subject: Subject::Label {
                    key: "team".into(),
                    value: "web".into(),
                },
                tools: "http.get".into(),
                created_at: String::new(),
            },
        ]);
        assert!(g.allows(&Caller::agent("agt_1"), "fs.read"));
        assert!(!g.allows(&Caller::agent("agt_1"), "http.get"));
        assert!(!g.allows(&Caller::agent("agt_2"), "fs.read"));
        let web = Caller::Agent {
            id: "agt_3".into(),
            labels: BTreeMap::from([("team".into(), "web".into())]),
        };
        assert!(g.allows(&web, "http.get"));
        assert!(!g.allows(&web, "fs.read"));
        assert!(g.allows(&Caller::Operator, "anything.at_all"));
    }
}
