//! The pipeline every syscall runs through.

use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use strata_core::{Error, ErrorCode, Id, Principal, Result};
use strata_governance::{AuditDraft, audit, digest, idempotency, intent};
use strata_store::event::{self, NewEvent};
use strata_store::{Conn, Durability, Tail, TailItem};

use crate::Kernel;
use crate::registry::{Action, Cx, Each, Entry, ExternalRun, WriteOp};

/// A call as an adapter received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The syscall name, e.g. `agent.create`.
    pub syscall: String,
    /// The bearer token, without `Bearer `.
    pub token: Option<String>,
    /// The request as JSON (path parameters already merged in).
    pub input: Value,
    /// The `Idempotency-Key`, if sent.
    pub idempotency_key: Option<String>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The status (201 for creations, 200 otherwise).
    pub status: u16,
    /// The response body.
    pub body: Value,
    /// Whether this is a stored response replayed for a repeated `Idempotency-Key`.
    pub replayed: bool,
}

/// A unique violation on an idempotency key as [`WriteError::KeyTaken`].
fn key_taken(e: strata_store::Error) -> WriteError {
    if e.is_unique_violation() {
        WriteError::KeyTaken
    } else {
        WriteError::Store(e)
    }
}

/// Why a write did not commit.
enum WriteError {
    /// The layer refused (its changes rolled back).
    Layer(Error),
    /// Another call committed the same idempotency key first.
    KeyTaken,
    /// The store failed.
    Store(strata_store::Error),
}

impl From<strata_store::Error> for WriteError {
    fn from(e: strata_store::Error) -> Self {
        WriteError::Store(e)
    }
}

/// What the pipeline carries from its start to the commit.
struct Call<'a> {
    entry: &'a Entry,
    cx: Cx,
    request_digest: String,
    key: Option<String>,
}

impl Kernel {
    /// Runs one syscall through the whole pipeline.
    pub async fn call(&self, req: Request) -> Result<Reply> {
        let started = Instant::now();
        let Some(idx) = self.inner.registry.index_of(&req.syscall) else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no syscall is named '{}'", req.syscall),
            ));
        };
        let entry = &self.inner.registry.entries()[idx];
        let (result, principal) = self.run(entry, req).await;
        let status = match &result {
            Ok(r) => r.status,
            Err(e) => e.status(),
        };
        let micros = started.elapsed().as_micros() as u64;
        self.inner.metrics.observe(idx, status, micros);
        if let Some(p) = principal {
            self.inner.meter.record(&p, &entry.spec, status, micros);
        }
        result
    }

    async fn run(&self, entry: &Entry, req: Request) -> (Result<Reply>, Option<Principal>) {
        let principal = match self.authenticate(req.token.as_deref()).await {
            Ok(p) => p,
            Err(e) => return (Err(e), None),
        };
        // Every call by an agent is a heartbeat; a long poll keeps it present.
        let _present = match &principal {
            Principal::Agent { agent_id, .. } => Some(self.orchestrator().presence().enter(agent_id)),
            Principal::Admin { .. } => None,
        };
        let result = self.run_as(entry, principal.clone(), req).await;
        (result, Some(principal))
    }

    /// Runs syscall `name` as `principal`, which Strata itself vouches for (its
    /// reconciler acting as an operator). Audited like any call.
    pub async fn call_as(&self, principal: Principal, name: &str, input: Value) -> Result<Value> {
        let Some(idx) = self.inner.registry.index_of(name) else {
            return Err(Error::internal(format!("no syscall is named '{name}'")));
        };
        let entry = &self.inner.registry.entries()[idx];
        let req = Request {
            syscall: name.to_string(),
            token: None,
            input,
            idempotency_key: None,
        };
        Ok(self.run_as(entry, principal, req).await?.body)
    }

    async fn run_as(&self, entry: &Entry, principal: Principal, req: Request) -> Result<Reply> {
        let spec = &entry.spec;
        let mutates = spec.effect.mutates();
        let request_digest = if mutates {
            digest(format!("{}\n{}", spec.name, self.digestible(spec.name, &req.input)).as_bytes())
        } else {
            String::new()
        };
        let call = Call {
            entry,
            cx: Cx {
                principal,
                now: self.now(),
            },
            request_digest,
            key: req.idempotency_key.filter(|_| mutates),
        };
        if let Err(e) = self.inner.policy.authorize(&call.cx.principal, spec) {
            self.audit_refusal(&call, spec.resource, &e).await;
            return Err(e);
        }
        if let Some(key) = &call.key {
            if !idempotency::valid_key(key) {
                return Err(Error::new(
                    ErrorCode::InvalidIdempotencyKey,
                    "Idempotency-Key must be 1 to 255 printable ASCII characters",
                ));
            }
            if let Some(reply) = self.replay(&call, key).await? {
                return Ok(reply);
            }
        }
        self.inner.budget.check(&call.cx.principal, spec)?;
        match (entry.call)(self, call.cx.clone(), req.input).await {
            Ok(Action::Done(body)) => Ok(Reply {
                status: spec.status,
                body,
                replayed: false,
            }),
            Ok(Action::Write { resource, op }) => {
                let op: WriteOp<Each<Value>> = Box::new(move |c| {
                    Box::pin(async move {
                        let body = op(c).await?;
                        Ok(Each {
                            body,
                            resources: vec![resource],
                        })
                    })
                });
                self.commit(&call, op).await
            }
            Ok(Action::WriteEach { op }) => self.commit(&call, op).await,
            Ok(Action::External { resource, run }) => self.run_external(&call, resource, run, true).await,
            Ok(Action::ExternalRead { resource, run }) => {
                // A key's claim is held by an intent.
                let intent = call.key.is_some();
                self.run_external(&call, resource, run, intent).await
            }
            Err(e) => {
                self.audit_refusal(&call, spec.resource, &e).await;
                Err(e)
            }
        }
    }

    /// The request as its digest covers it. A secret's value is replaced by a
    /// digest keyed with the master key, so the digest in the audit log and the
    /// intents cannot be used to guess the value offline.
    fn digestible<'v>(&self, syscall: &str, input: &'v Value) -> std::borrow::Cow<'v, Value> {
        match input.get("value").and_then(Value::as_str) {
            Some(v) if syscall == "secret.set" => {
                let mut copy = input.clone();
                let keyed = digest(format!("{}\n{v}", self.inner.master_key.to_hex()).as_bytes());
                copy["value"] = Value::String(keyed);
                std::borrow::Cow::Owned(copy)
            }
            _ => std::borrow::Cow::Borrowed(input),
        }
    }

    /// The stored reply for a repeated key, a conflict for a reused one, or nothing.
    async fn replay(&self, call: &Call<'_>, key: &str) -> Result<Option<Reply>> {
        let scope = call.cx.principal.idempotency_scope();
        let Some(rec) = idempotency::lookup(&self.inner.store, &scope, key).await? else {
            return Ok(None);
        };
        if rec.syscall != call.entry.spec.name || rec.request_hash != call.request_digest {
            return Err(Error::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "Idempotency-Key '{key}' was already used for a different {} request",
                    rec.syscall
                ),
            ));
        }
        if idempotency::in_flight(&rec) {
            return Err(Error::new(
                ErrorCode::IdempotencyKeyInFlight,
                format!(
                    "a {} call with Idempotency-Key '{key}' is still running",
                    rec.syscall
                ),
            )
            .retry_after(1000));
        }
        // Stored responses are sealed: they can hold secrets shown only once (tokens).
        let plain = hex::decode(&rec.response)
            .ok()
            .and_then(|b| self.inner.master_key.open(&b).ok())
            .ok_or_else(|| Error::internal("stored idempotent response cannot be opened"))?;
        let body = serde_json::from_slice(&plain).map_err(Error::internal)?;
        Ok(Some(Reply {
            status: rec.status,
            body,
            replayed: true,
        }))
    }

    async fn commit(&self, call: &Call<'_>, op: WriteOp<Each<Value>>) -> Result<Reply> {
        let spec = call.entry.spec;
        let now = call.cx.now;
        let principal = call.cx.principal.audit_name();
        let request_digest = call.request_digest.clone();
        let idem = call
            .key
            .clone()
            .map(|key| (call.cx.principal.idempotency_scope(), key));
        let request_hash = call.request_digest.clone();
        let sealer = self.inner.master_key.clone();
        let written = self
            .inner
            .store
            .write_logged(move |c| {
                Box::pin(async move {
                    let Each { body: out, resources } = op(c).await.map_err(WriteError::Layer)?;
                    if let Some((scope, key)) = idem {
                        let rec = idempotency::Record {
                            syscall: spec.name.to_string(),
                            request_hash,
                            status: spec.status,
                            response: hex::encode(sealer.seal(out.to_string().as_bytes())),
                        };
                        idempotency::record(c, &scope, &key, &rec, now)
                            .await
                            .map_err(key_taken)?;
                    }
                    let resources = if resources.is_empty() {
                        vec![spec.resource.to_string()]
                    } else {
                        resources
                    };
                    // The audit entries and events are written once for the whole
                    // batch of writes, just before it commits (see `Logs`).
                    let logs: Vec<TailItem> = resources
                        .into_iter()
                        .map(|resource| -> TailItem {
                            Box::new(AuditDraft {
                                at: now,
                                principal: principal.clone(),
                                syscall: spec.name.to_string(),
                                resource,
                                intent_id: Id::new("int").to_string(),
                                outcome: "ok".into(),
                                status: spec.status,
                                request_digest: request_digest.clone(),
                            })
                        })
                        .collect();
                    Ok((out, logs))
                })
            })
            .await;
        match written {
            Ok(body) => {
                if spec.resource == "token" || spec.name == "agent.delete" {
                    self.forget_tokens();
                }
                Ok(Reply {
                    status: spec.status,
                    body,
                    replayed: false,
                })
            }
            Err(WriteError::KeyTaken) => {
                let key = call.key.as_deref().unwrap_or_default();
                self.replay(call, key)
                    .await?
                    .ok_or_else(|| Error::internal("idempotency record vanished after a key conflict"))
            }
            Err(WriteError::Layer(e)) => {
                // A concurrent call with the same key may have committed first, and
                // this one then failed on the state it created (e.g. the name is
                // taken): the caller's retry deserves the first call's answer.
                if let Some(key) = call.key.as_deref()
                    && let Some(reply) = self.replay(call, key).await?
                {
                    return Ok(reply);
                }
                self.audit_refusal(call, spec.resource, &e).await;
                Err(e)
            }
            Err(WriteError::Store(e)) => {
                tracing::error!(syscall = spec.name, error = %e, "write failed");
                Err(e.into())
            }
        }
    }

    /// Runs an external effect: its intent commits durably before the effect
    /// starts, so a crash in between leaves a `pending` intent naming it; the
    /// outcome, the idempotency record (for a success), the audit entry and the
    /// event then commit together. A failed effect is audited with its code and
    /// records no idempotency answer, so a retry with the same key runs again.
    ///
    /// Without `intent` (a read-only call, no key) only the second commit runs:
    /// the audit entry and event, before the answer.
    async fn run_external(
        &self,
        call: &Call<'_>,
        resource: String,
        run: ExternalRun<Value>,
        intent: bool,
    ) -> Result<Reply> {
        let spec = call.entry.spec;
        let intent_id = Id::new("int").to_string();
        let principal = call.cx.principal.audit_name();
        if intent {
            let (id, who, digest) = (intent_id.clone(), principal.clone(), call.request_digest.clone());
            let now = call.cx.now;
            let instance = self.inner.instance.id.clone();
            let renew = self.inner.instance.stale(now);
            let claim = call
                .key
                .clone()
                .map(|key| (call.cx.principal.idempotency_scope(), key));
            let begun: Result<(), WriteError> = self
                .inner
                .store
                .write(move |c| {
                    Box::pin(async move {
                        if renew {
                            intent::keep_alive(c, &instance, now, crate::intents::INSTANCE_TTL_MS).await?;
                        }
                        let begin = intent::Begin {
                            id: &id,
                            instance: &instance,
                            principal: &who,
                            syscall: spec.name,
                            request_digest: &digest,
                        };
                        intent::begin(c, begin, now).await?;
                        if let Some((scope, key)) = claim {
                            idempotency::claim(c, &scope, &key, spec.name, &digest, &id, now)
                                .await
                                .map_err(key_taken)?;
                        }
                        Ok(())
                    })
                })
                .await;
            match begun {
                Ok(()) => {}
                Err(WriteError::KeyTaken) => {
                    // Another call holds the key: its answer, or "in flight".
                    let key = call.key.as_deref().unwrap_or_default();
                    return self.replay(call, key).await?.ok_or_else(|| {
                        Error::new(
                            ErrorCode::IdempotencyKeyInFlight,
                            format!("a call with Idempotency-Key '{key}' has just finished; retry"),
                        )
                        .retry_after(100)
                    });
                }
                Err(WriteError::Layer(e)) => return Err(e),
                Err(WriteError::Store(e)) => return Err(e.into()),
            }
            if renew {
                self.inner.instance.renewed(now);
            }
        }
        let result = run.await;
        let now = self.now();
        let (outcome, status) = match &result {
            Ok(_) => ("ok".to_string(), spec.status),
            Err(e) => (e.code.as_str().to_string(), e.status()),
        };
        // The key's claim becomes the stored answer of a success; a failure
        // drops it, so a retry with the same key runs again.
        let idem = call.key.as_ref().map(|key| {
            let rec = result.as_ref().ok().map(|body| idempotency::Record {
                syscall: spec.name.to_string(),
                request_hash: call.request_digest.clone(),
                status: spec.status,
                response: hex::encode(self.inner.master_key.seal(body.to_string().as_bytes())),
            });
            (call.cx.principal.idempotency_scope(), key.clone(), rec)
        });
        let draft = AuditDraft {
            at: now,
            principal,
            syscall: spec.name.to_string(),
            resource,
            intent_id: intent_id.clone(),
            outcome: outcome.clone(),
            status,
            request_digest: call.request_digest.clone(),
        };
        // A call with no intent changed nothing (a read-only tool, no key): its
        // answer is not a write, so its record need not reach the disk before
        // it. It is committed first all the same, so a crash of this process
        // cannot lose it; power loss within the store's sync window can
        // (unless the operator asks for read-only calls to be synced too).
        let durability = if intent || self.inner.sync_read_only_calls {
            Durability::Synced
        } else {
            Durability::Committed
        };
        let written: Result<(), WriteError> = self
            .inner
            .store
            .write_logged_as(durability, move |c| {
                Box::pin(async move {
                    if intent {
                        intent::finish(c, &intent_id, &outcome, now).await?;
                    }
                    match idem {
                        Some((scope, key, Some(rec))) => idempotency::complete(c, &scope, &key, &rec, now)
                            .await
                            .map_err(key_taken)?,
                        Some((scope, key, None)) => idempotency::release(c, &scope, &key).await?,
                        None => {}
                    }
                    let logs: Vec<TailItem> = vec![Box::new(draft)];
                    Ok(((), logs))
                })
            })
            .await;
        match written {
            Ok(()) => {}
            Err(WriteError::KeyTaken) => {
                // Recovery released this call's claim (it took this server for
                // dead) and another call with the key finished first: both ran
                // the effect, and the caller gets the first one's answer.
                let key = call.key.as_deref().unwrap_or_default();
                return self
                    .replay(call, key)
                    .await?
                    .ok_or_else(|| Error::internal("idempotency record vanished after a key conflict"));
            }
            Err(WriteError::Layer(e)) => return Err(e),
            Err(WriteError::Store(e)) => {
                tracing::error!(syscall = spec.name, error = %e, "the outcome of an external effect was not recorded");
                return Err(e.into());
            }
        }
        result.map(|body| Reply {
            status: spec.status,
            body,
            replayed: false,
        })
    }

    /// Audits a mutating call that was refused after authentication. Malformed
    /// requests are not audited: they never reached a layer.
    async fn audit_refusal(&self, call: &Call<'_>, resource: &str, e: &Error) {
        let spec = call.entry.spec;
        if !spec.effect.mutates() || matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidRequest) {
            return;
        }
        let draft = AuditDraft {
            at: call.cx.now,
            principal: call.cx.principal.audit_name(),
            syscall: spec.name.to_string(),
            resource: resource.to_string(),
            intent_id: Id::new("int").to_string(),
            outcome: e.code.as_str().to_string(),
            status: e.status(),
            request_digest: call.request_digest.clone(),
        };
        let done: Result<i64, strata_store::Error> = self
            .inner
            .store
            .write(move |c| Box::pin(async move { audit::append(c, &draft).await }))
            .await;
        if let Err(err) = done {
            tracing::error!(syscall = spec.name, error = %err, "could not audit a refused call");
        }
    }
}

/// Writes the audit entries (and their events) that a batch of writes left, in
/// the order the writes ran: one chain extension and one event insert per batch.
pub(crate) struct Logs;

impl Tail for Logs {
    fn flush<'c>(
        &'c self,
        conn: &'c mut Conn,
        items: Vec<TailItem>,
    ) -> BoxFuture<'c, Result<(), strata_store::Error>> {
        Box::pin(async move {
            let drafts: Vec<AuditDraft> = items
                .into_iter()
                .map(|i| {
                    i.downcast::<AuditDraft>().map(|d| *d).map_err(|_| {
                        strata_store::Error::Corrupt("a log row that is not an audit draft".into())
                    })
                })
                .collect::<Result<_, _>>()?;
            audit::append_many(conn, &drafts).await?;
            let events: Vec<NewEvent> = drafts
                .into_iter()
                .map(|d| NewEvent {
                    at: d.at,
                    data: json!({"principal": d.principal, "intent_id": d.intent_id}),
                    kind: d.syscall,
                    subject: d.resource,
                })
                .collect();
            event::append_many(conn, &events).await
        })
    }
}
