//! The syscall registry: declarations, erased to JSON in and JSON out.

use std::collections::HashMap;
use std::future::Future;

use futures::future::BoxFuture;
use strata_core::{Error, Principal, Result, Spec, Syscall};
use strata_store::Conn;

use crate::Kernel;

/// The context of one call.
#[derive(Debug, Clone)]
pub struct Cx {
    /// Who is calling.
    pub principal: Principal,
    /// When the call started (epoch ms).
    pub now: i64,
}

/// A store-only effect: SQL run inside the writer's transaction.
pub type WriteOp<R> = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<R>> + Send>;

/// What a handler decided to do.
pub enum Action<R> {
    /// The answer, with no effect (reads).
    Done(R),
    /// A store-only effect on `resource` (its id); the kernel commits it with its
    /// idempotency record, audit entry and event.
    Write {
        /// The id of the resource the effect touches.
        resource: String,
        /// The effect.
        op: WriteOp<R>,
    },
    /// A store-only effect on many resources at once (batch calls): the effect
    /// returns the ids it changed, and each gets its own audit entry and event.
    WriteEach {
        /// The effect.
        op: WriteOp<Each<R>>,
    },
    /// An effect outside the kernel's transaction (an upstream call, or a layer
    /// that commits its own rows) on `resource`: the kernel commits an intent
    /// before `run` starts, then the outcome, idempotency record, audit entry and
    /// event in one transaction after it ends.
    External {
        /// The id of the resource the effect touches.
        resource: String,
        /// The effect.
        run: ExternalRun<R>,
    },
    /// A call outside the kernel's transaction that changes nothing (a
    /// read-only upstream tool) on `resource`. It is no side effect, so no
    /// intent precedes it: a crash during it leaves nothing to resolve. The
    /// outcome's audit entry and event commit after it ends, before the answer.
    /// With an `Idempotency-Key` it runs as [`Action::External`], whose intent
    /// holds the key's claim.
    ExternalRead {
        /// The id of the resource the call reads.
        resource: String,
        /// The call.
        run: ExternalRun<R>,
    },
}

/// An external effect, run outside the writer.
pub type ExternalRun<R> = BoxFuture<'static, Result<R>>;

/// What a batch effect returns: its answer and the resources it changed.
pub struct Each<R> {
    /// The answer.
    pub body: R,
    /// The resources changed, one audit entry each (none: the call is audited
    /// once, on the resource kind).
    pub resources: Vec<String>,
}

impl<R> Action<R> {
    /// An external effect on `resource`.
    pub fn external<F>(resource: impl Into<String>, run: F) -> Action<R>
    where
        F: Future<Output = Result<R>> + Send + 'static,
    {
        Action::External {
            resource: resource.into(),
            run: Box::pin(run),
        }
    }

    /// A read-only external call on `resource`.
    pub fn external_read<F>(resource: impl Into<String>, run: F) -> Action<R>
    where
        F: Future<Output = Result<R>> + Send + 'static,
    {
        Action::ExternalRead {
            resource: resource.into(),
            run: Box::pin(run),
        }
    }

    /// A write on `resource`.
    pub fn write<F>(resource: impl Into<String>, op: F) -> Action<R>
    where
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<R>> + Send + 'static,
    {
        Action::Write {
            resource: resource.into(),
            op: Box::new(op),
        }
    }
}

/// The behaviour behind a syscall declaration.
pub trait Handler: Syscall {
    /// Checks the request against the caller and the state, then answers or plans
    /// the effect. Runs outside the writer: do CPU work and reads here.
    fn handle(
        k: &Kernel,
        cx: &Cx,
        req: Self::Request,
    ) -> impl Future<Output = Result<Action<Self::Response>>> + Send;
}

type Erased =
    for<'a> fn(&'a Kernel, Cx, serde_json::Value) -> BoxFuture<'a, Result<Action<serde_json::Value>>>;

/// One declared syscall, erased for adapters.
pub struct Entry {
    /// The declaration.
    pub spec: Spec,
    /// The request's JSON Schema, self-contained.
    pub request_schema: serde_json::Value,
    /// The response's JSON Schema, self-contained.
    pub response_schema: serde_json::Value,
    pub(crate) call: Erased,
}

/// All syscalls, by name.
pub struct Registry {
    entries: Vec<Entry>,
    by_name: HashMap<&'static str, usize>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            entries: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    pub(crate) fn add<S: Handler>(&mut self) {
        let entry = Entry {
            spec: S::SPEC,
            request_schema: schemars::schema_for!(S::Request).to_value(),
            response_schema: schemars::schema_for!(S::Response).to_value(),
            call: erased::<S>,
        };
        let prev = self.by_name.insert(S::SPEC.name, self.entries.len());
        assert!(prev.is_none(), "syscall {} declared twice", S::SPEC.name);
        self.entries.push(entry);
    }

    /// Every syscall in declaration order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The syscall named `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Whether `scope` is a pattern that names at least one syscall.
    pub fn scope_is_known(&self, scope: &str) -> bool {
        self.entries
            .iter()
            .any(|e| strata_core::syscall::scope_covers(scope, e.spec.name))
    }
}

fn parse<T: serde::de::DeserializeOwned>(input: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde's messages end with " at line L column C", meaningless for a Value.
        let msg = inner.split(" at line ").next().unwrap_or(&inner).to_string();
        if path == "." {
            Error::invalid("body", msg)
        } else {
            Error::invalid(&path, msg)
        }
    })
}

fn erased<S: Handler>(
    k: &Kernel,
    cx: Cx,
    input: serde_json::Value,
) -> BoxFuture<'_, Result<Action<serde_json::Value>>> {
    Box::pin(async move {
        let req: S::Request = parse(input)?;
        let to_json = |r: S::Response| serde_json::to_value(r).map_err(Error::internal);
        Ok(match S::handle(k, &cx, req).await? {
            Action::Done(r) => Action::Done(to_json(r)?),
            Action::Write { resource, op } => Action::write(resource, move |c| {
                Box::pin(async move { op(c).await.and_then(to_json) })
            }),
            Action::External { resource, run } => {
                Action::external(resource, async move { run.await.and_then(to_json) })
            }
            Action::ExternalRead { resource, run } => {
                Action::external_read(resource, async move { run.await.and_then(to_json) })
            }
            Action::WriteEach { op } => Action::WriteEach {
                op: Box::new(move |c| {
                    Box::pin(async move {
                        let each = op(c).await?;
                        Ok(Each {
                            body: to_json(each.body)?,
                            resources: each.resources,
                        })
                    })
                }),
            },
        })
    })
}
