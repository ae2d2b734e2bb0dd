//! The catalog: every tool of every connection, named `connection.tool`, with
//! its input schema compiled once for validating calls.
//!
//! The catalog is the in-memory copy of `tl_connections` and `tl_tools`, rebuilt
//! from the store on [`crate::Tools::reload`] and updated by this process's own
//! registrations and syncs. Listing is filtered by grants: an agent sees only
//! what it may call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_core::Result;

use crate::connection::Conn;
use crate::{Caller, Tools};

/// A tool as an upstream describes it, before it is namespaced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolDef {
    pub(crate) upstream_name: String,
    pub(crate) description: String,
    pub(crate) input_schema: Value,
    /// The JSON Schema of its `structuredContent`, when the upstream declares one.
    pub(crate) output_schema: Option<Value>,
    pub(crate) idempotent: bool,
    /// Whether calling it changes nothing (read-only tools are idempotent too).
    pub(crate) read_only: bool,
    /// How to call it (an OpenAPI operation); null for MCP tools.
    pub(crate) binding: Value,
}

/// A tool as agents see it: what a kernel syscall or an MCP server lists.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ToolInfo {
    /// `connection.tool`
    pub name: String,
    /// What it does, as the upstream says.
    pub description: String,
    /// The JSON Schema its arguments must match.
    pub input_schema: Value,
    /// The JSON Schema of the result's `structuredContent`, as the upstream
    /// declares it (MCP `outputSchema`); relayed, not enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// The connection it belongs to.
    pub connection: String,
    /// Whether the gateway retries it after an upstream failure.
    pub idempotent: bool,
    /// Whether calling it changes nothing outside Strata (MCP `readOnlyHint`,
    /// HTTP `GET`/`HEAD`/`OPTIONS`, or the connection's `read_only` list). Its
    /// calls are not external side effects: no intent is recorded before them.
    pub read_only: bool,
}

/// A filter for [`Tools::list_tools`].
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTools {
    /// Words that must all appear in the name or description (case-insensitive).
    #[serde(default)]
    pub query: Option<String>,
    /// Only this connection's tools.
    #[serde(default)]
    pub connection: Option<String>,
}

/// A catalog entry.
pub(crate) struct Entry {
    pub(crate) info: ToolInfo,
    pub(crate) upstream_name: String,
    pub(crate) binding: Value,
    /// `None` when the upstream's schema does not compile: calls are refused.
    pub(crate) validator: Option<jsonschema::Validator>,
    pub(crate) schema_error: Option<String>,
}

impl Entry {
    pub(crate) fn new(conn: &str, def: ToolDef) -> Entry {
        let (validator, schema_error) = match jsonschema::validator_for(&def.input_schema) {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Entry {
            info: ToolInfo {
                name: format!("{conn}.{}", def.upstream_name),
                description: def.description,
                input_schema: def.input_schema,
                output_schema: def.output_schema,
                connection: conn.to_string(),
                idempotent: def.idempotent,
                read_only: def.read_only,
            },
            upstream_name: def.upstream_name,
            binding: def.binding,
            validator,
            schema_error,
        }
    }
}

#[derive(Default)]
struct State {
    conns: HashMap<String, Arc<Conn>>,
    tools: BTreeMap<String, Arc<Entry>>,
}

/// The catalog, shared by every call.
pub(crate) struct Catalog {
    state: RwLock<State>,
    /// Bumped whenever the listed tools (or, through [`Catalog::announce`], the
    /// grants) change.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Catalog {
    fn default() -> Catalog {
        Catalog {
            state: RwLock::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

fn infos(state: &State) -> Vec<ToolInfo> {
    state.tools.values().map(|e| e.info.clone()).collect()
}

impl Catalog {
    /// Tells subscribers that what agents may see has changed.
    pub(crate) fn announce(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs `f` on the state under the write lock; announces if the tools changed.
    fn change(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let before = infos(&state);
        f(&mut state);
        let changed = before != infos(&state);
        drop(state);
        if changed {
            self.announce();
        }
    }

    /// Replaces everything with what the store holds.
    pub(crate) fn replace_all(&self, conns: &[Arc<Conn>], tools: Vec<(String, ToolDef)>) -> Result<()> {
        let by_id: HashMap<&str, &Arc<Conn>> = conns.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut state = State::default();
        for c in conns {
            state.conns.insert(c.name.clone(), c.clone());
        }
        for (conn_id, def) in tools {
            if let Some(c) = by_id.get(conn_id.as_str()) {
                let e = Entry::new(&c.name, def);
                state.tools.insert(e.info.name.clone(), Arc::new(e));
            }
        }
        self.change(|s| *s = state);
        Ok(())
    }

    /// Installs `conn` with exactly `defs` as its tools.
    pub(crate) fn put(&self, conn: Arc<Conn>, defs: Vec<ToolDef>) {
        self.change(|state| {
            let prefix = format!("{}.", conn.name);
            state.tools.retain(|name, _| !name.starts_with(&prefix));
            for def in defs {
                let e = Entry::new(&conn.name, def);
                state.tools.insert(e.info.name.clone(), Arc::new(e));
            }
            state.conns.insert(conn.name.clone(), conn);
        });
    }

    /// Drops a connection and its tools.
    pub(crate) fn remove(&self, name: &str) {
        self.change(|state| {
            let prefix = format!("{name}.");
            state.tools.retain(|n, _| !n.starts_with(&prefix));
            state.conns.remove(name);
        });
    }

    pub(crate) fn conn(&self, name: &str) -> Option<Arc<Conn>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .conns
            .get(name)
            .cloned()
    }

    pub(crate) fn conns(&self) -> Vec<Arc<Conn>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = state.conns.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A tool and its connection.
    pub(crate) fn tool(&self, name: &str) -> Option<(Arc<Entry>, Arc<Conn>)> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let e = state.tools.get(name)?;
        let c = state.conns.get(&e.info.connection)?;
        Some((e.clone(), c.clone()))
    }

    /// The tools of connection `name`.
    pub(crate) fn tools_of(&self, name: &str) -> Vec<ToolInfo> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .tools
            .values()
            .filter(|e| e.info.connection == name)
            .map(|e| e.info.clone())
            .collect()
    }

    /// Names of the connections whose definition refers to secret `name`.
    pub(crate) fn connections_using_secret(&self, name: &str) -> Vec<String> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = state
            .conns
            .values()
            .filter(|c| c.secrets.contains(name))
            .map(|c| c.name.clone())
            .collect();
        v.sort();
        v
    }

    fn list(&self, filter: impl Fn(&Entry) -> bool) -> Vec<ToolInfo> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .tools
            .values()
            .filter(|e| filter(e))
            .map(|e| e.info.clone())
            .collect()
    }
}

fn matches_query(info: &ToolInfo, words: &[String]) -> bool {
    if words.is_empty() {
        return true;
    }
    let hay = format!("{} {}", info.name, info.description).to_lowercase();
    words.iter().all(|w| hay.contains(w.as_str()))
}

impl Tools {
    /// The tools `caller` may call, filtered by `req`, by name. An agent without
    /// a grant gets an empty list.
    pub fn list_tools(&self, caller: &Caller, req: &ListTools) -> Vec<ToolInfo> {
        let words: Vec<String> = req
            .query
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        let grants = &self.inner.grants;
        let mut tools = self.inner.catalog.list(|e| {
            req.connection.as_ref().is_none_or(|c| *c == e.info.connection)
                && grants.allows(caller, &e.info.name)
                && matches_query(&e.info, &words)
        });
        if !words.is_empty() {
            // Name matches first: an agent searching "read" wants `fs.read_file` before
            // a tool that merely mentions reading.
            tools.sort_by_key(|t| {
                let name = t.name.to_lowercase();
                !words.iter().all(|w| name.contains(w.as_str()))
            });
        }
        tools
    }

    /// Whether tool `name` exists and is read-only (whoever asks: this says
    /// nothing to callers, it only picks how the kernel records the call).
    pub fn is_read_only(&self, name: &str) -> bool {
        self.inner
            .catalog
            .tool(name)
            .is_some_and(|(e, _)| e.info.read_only)
    }

    /// One tool, if `caller` may call it (`not_found` otherwise, so an agent
    /// cannot probe for tools it has no grant for).
    pub fn get_tool(&self, caller: &Caller, name: &str) -> Result<ToolInfo> {
        match self.inner.catalog.tool(name) {
            Some((e, _)) if self.inner.grants.allows(caller, name) => Ok(e.info.clone()),
            _ => Err(strata_core::Error::not_found("tool", name)),
        }
    }
}
