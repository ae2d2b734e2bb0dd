//! Curation: deciding what each new fact does to the memories of its scope.
//!
//! For each fact, in order:
//! 1. the same normalised text is already a current memory of the scope → **NONE**;
//! 2. the fact has a slot key and a current memory holds that key →
//!    a retraction **DELETE**s it; a fact saying nearly the same (term Jaccard
//!    ≥ 0.85) is **NONE**; otherwise the fact **UPDATE**s it (supersedes it);
//! 3. a retraction with nothing to retract is kept as a plain new memory;
//! 4. a nearest memory (best lexical and dense matches in the scope) saying
//!    nearly the same (Jaccard ≥ 0.85, or cosine ≥ 0.95 with an embedder) → **NONE**;
//! 5. otherwise → **ADD**.
//!
//! The plan is made outside the store's writer from the index; [`apply`] runs it
//! inside one write and re-checks what could have changed meanwhile (an exact
//! duplicate added concurrently becomes NONE; a memory retired concurrently is
//! not updated but added anew), so concurrent adds of one fact still leave one memory.

use serde_json::Value;
use strata_core::{Error, Id, Result};

use crate::extract::{self, Fact};
use crate::index::Index;
use crate::memory::{Change, Checked, Event};
use crate::store::{self, NewVersion};
use crate::{Memory, term};

const NEAR_JACCARD: f32 = 0.85;
const NEAR_COSINE: f32 = 0.95;

/// Facts planned earlier in the same batch, not yet in the index:
/// (hash, scope and slot key, memory id, text).
pub(crate) type Planned = Vec<(String, Option<String>, String, String)>;

/// What one fact will do.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Add {
        memory_id: String,
        fact: Fact,
        vector: Option<Vec<f32>>,
    },
    Update {
        memory_id: String,
        previous: String,
        fact: Fact,
        vector: Option<Vec<f32>>,
    },
    Delete {
        memory_id: String,
        previous: String,
    },
    None {
        memory_id: String,
        memory: String,
    },
}

/// Decides, from the index, what each fact of an add does.
pub(crate) fn plan(
    idx: &Index,
    planned: &mut Planned,
    c: &Checked,
    facts: Vec<Fact>,
    vectors: Vec<Option<Vec<f32>>>,
) -> Vec<Step> {
    let scope = c.scope.key();
    let mut steps: Vec<Step> = Vec::new();
    for (fact, vector) in facts.into_iter().zip(vectors) {
        let hash = c.scope.hash(&fact.text);
        if let Some((_, _, id, text)) = planned.iter().find(|p| p.0 == hash) {
            steps.push(Step::None {
                memory_id: id.clone(),
                memory: text.clone(),
            });
            continue;
        }
        if let Some(r) = idx.open_with_hash(&hash) {
            steps.push(Step::None {
                memory_id: r.memory_id.clone(),
                memory: r.memory.clone(),
            });
            continue;
        }
        if let Some(key) = fact.key.clone() {
            let scoped = format!("{scope}\u{0}{key}");
            let holder = planned
                .iter()
                .rev()
                .find(|p| p.1.as_deref() == Some(scoped.as_str()))
                .map(|p| (p.2.clone(), p.3.clone()))
                .or_else(|| {
                    idx.open_with_slot(&scope, &key)
                        .map(|r| (r.memory_id.clone(), r.memory.clone()))
                });
            match holder {
                Some((memory_id, previous)) if fact.retract => {
                    planned.retain(|p| p.2 != memory_id);
                    steps.push(Step::Delete { memory_id, previous });
                    continue;
                }
                Some((memory_id, previous)) if term::jaccard(&previous, &fact.text) >= NEAR_JACCARD => {
                    steps.push(Step::None {
                        memory_id,
                        memory: previous,
                    });
                    continue;
                }
                Some((memory_id, previous)) => {
                    planned.push((hash, Some(scoped), memory_id.clone(), fact.text.clone()));
                    steps.push(Step::Update {
                        memory_id,
                        previous,
                        fact,
                        vector,
                    });
                    continue;
                }
                None => {}
            }
        }
        let near = idx
            .nearest(&scope, &fact.text, vector.as_deref(), 5)
            .into_iter()
            .find(|r| {
                term::jaccard(&r.memory, &fact.text) >= NEAR_JACCARD
                    || matches!((&vector, &r.embedding), (Some(a), Some(b)) if crate::embed::dot(a, b) >= NEAR_COSINE)
            })
            .map(|r| (r.memory_id.clone(), r.memory.clone()));
        if let Some((memory_id, memory)) = near {
            steps.push(Step::None { memory_id, memory });
            continue;
        }
        let memory_id = Id::new("mem").to_string();
        let mut fact = fact;
        if fact.retract {
            // Nothing held the key: keep the statement itself, without a slot.
            fact.key = None;
            fact.retract = false;
        }
        let scoped = fact.key.as_ref().map(|k| format!("{scope}\u{0}{k}"));
        planned.push((hash, scoped, memory_id.clone(), fact.text.clone()));
        steps.push(Step::Add {
            memory_id,
            fact,
            vector,
        });
    }
    steps
}

fn links(fact: &Fact) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for r in &fact.relations {
        let l = (r.subject.clone(), r.relation.clone(), r.object.clone());
        if !out.contains(&l) && out.len() < 64 {
            out.push(l);
        }
    }
    out
}

/// Runs the plans of a batch of adds inside one write; returns the changes as applied.
pub(crate) async fn apply(m: &Memory, plans: Vec<(Checked, Vec<Step>)>) -> Result<Vec<Vec<Change>>> {
    let now = m.now();
    let model = m.embed_model();
    m.store()
        .write(move |conn| {
            Box::pin(async move {
                let mut all = Vec::with_capacity(plans.len());
                for (c, steps) in plans {
                    let mut out = Vec::new();
                    for step in steps {
                        let change = match step {
                            Step::Add {
                                memory_id,
                                fact,
                                vector,
                            } => add(conn, &c, now, &model, memory_id, fact, vector).await?,
                            Step::Update {
                                memory_id,
                                previous,
                                fact,
                                vector,
                            } => match store::open_version(conn, &memory_id).await? {
                                Some((old, version, valid_from)) => {
                                    let created = store::created_at(conn, &memory_id).await?.unwrap_or(now);
                                    let valid_to = c.observed_at.max(valid_from);
                                    store::close_version(conn, &old, valid_to, now, "UPDATE").await?;
                                    let v = new_version(
                                        &c,
                                        now,
                                        &model,
                                        memory_id.clone(),
                                        version + 1,
                                        "UPDATE",
                                        &fact,
                                        vector,
                                        created,
                                        valid_to,
                                    );
                                    store::insert_version(conn, &v).await?;
                                    if let Some(s) = &c.source {
                                        store::add_source(
                                            conn,
                                            &memory_id,
                                            &v.version_id,
                                            "UPDATE",
                                            s,
                                            c.observed_at,
                                            now,
                                        )
                                        .await?;
                                    }
                                    Change {
                                        id: memory_id,
                                        memory: fact.text,
                                        event: Event::Update,
                                        previous_memory: Some(previous),
                                    }
                                }
                                None => {
                                    add(conn, &c, now, &model, Id::new("mem").to_string(), fact, vector)
                                        .await?
                                }
                            },
                            Step::Delete { memory_id, previous } => {
                                match store::open_version(conn, &memory_id).await? {
                                    Some((old, _, valid_from)) => {
                                        store::close_version(
                                            conn,
                                            &old,
                                            c.observed_at.max(valid_from),
                                            now,
                                            "DELETE",
                                        )
                                        .await?;
                                        if let Some(s) = &c.source {
                                            store::add_source(
                                                conn,
                                                &memory_id,
                                                &old,
                                                "DELETE",
                                                s,
                                                c.observed_at,
                                                now,
                                            )
                                            .await?;
                                        }
                                        Change {
                                            id: memory_id,
                                            memory: previous,
                                            event: Event::Delete,
                                            previous_memory: None,
                                        }
                                    }
                                    None => Change {
                                        id: memory_id,
                                        memory: previous,
                                        event: Event::None,
                                        previous_memory: None,
                                    },
                                }
                            }
                            Step::None { memory_id, memory } => {
                                if let (Some(s), Some((open, _, _))) =
                                    (&c.source, store::open_version(conn, &memory_id).await?)
                                {
                                    store::add_source(conn, &memory_id, &open, "NONE", s, c.observed_at, now)
                                        .await?;
                                }
                                Change {
                                    id: memory_id,
                                    memory,
                                    event: Event::None,
                                    previous_memory: None,
                                }
                            }
                        };
                        out.push(change);
                    }
                    all.push(out);
                }
                Ok::<_, Error>(all)
            })
        })
        .await
}

#[allow(clippy::too_many_arguments)]
fn new_version(
    c: &Checked,
    now: i64,
    model: &Option<String>,
    memory_id: String,
    version: i64,
    event: &'static str,
    fact: &Fact,
    vector: Option<Vec<f32>>,
    created_at: i64,
    valid_from: i64,
) -> NewVersion {
    NewVersion {
        version_id: Id::new("mev").to_string(),
        memory_id,
        version,
        event,
        memory: fact.text.clone(),
        hash: c.scope.hash(&fact.text),
        scope: c.scope.key(),
        user_id: c.scope.user_id.clone(),
        agent_id: c.scope.agent_id.clone(),
        run_id: c.scope.run_id.clone(),
        metadata: c.metadata.clone(),
        slot: fact.key.clone(),
        embed_model: vector.as_ref().and(model.clone()),
        embedding: vector,
        valid_from,
        recorded_at: now,
        created_at,
        links: links(fact),
    }
}

async fn add(
    conn: &mut strata_store::Conn,
    c: &Checked,
    now: i64,
    model: &Option<String>,
    memory_id: String,
    fact: Fact,
    vector: Option<Vec<f32>>,
) -> Result<Change> {
    let hash = c.scope.hash(&fact.text);
    if let Some((existing, version_id)) = store::open_by_hash(conn, &hash).await? {
        // Added meanwhile by a concurrent write: this one only confirms it.
        if let Some(s) = &c.source {
            store::add_source(conn, &existing, &version_id, "NONE", s, c.observed_at, now).await?;
        }
        return Ok(Change {
            id: existing,
            memory: fact.text,
            event: Event::None,
            previous_memory: None,
        });
    }
    let v = new_version(
        c,
        now,
        model,
        memory_id.clone(),
        1,
        "ADD",
        &fact,
        vector,
        now,
        c.observed_at,
    );
    store::insert_version(conn, &v).await?;
    if let Some(s) = &c.source {
        store::add_source(conn, &memory_id, &v.version_id, "ADD", s, c.observed_at, now).await?;
    }
    Ok(Change {
        id: memory_id,
        memory: fact.text,
        event: Event::Add,
        previous_memory: None,
    })
}

/// A new version of `memory_id` with `text` (an update by id), valid from now.
pub(crate) async fn replace(
    m: &Memory,
    memory_id: &str,
    text: String,
    metadata: Option<Value>,
    vector: Option<Vec<f32>>,
    source: Option<Value>,
) -> Result<Change> {
    let now = m.now();
    let model = m.embed_model();
    let memory_id = memory_id.to_string();
    let relations = extract::rule_facts(
        &[extract::Turn {
            speaker: "user".into(),
            text: text.clone(),
        }],
        now,
    )
    .into_iter()
    .flat_map(|f| f.relations)
    .collect();
    m.store()
        .write(move |conn| {
            Box::pin(async move {
                let Some((old, version, _)) = store::open_version(conn, &memory_id).await? else {
                    return Err(Error::not_found("memory", &memory_id));
                };
                let prev = store::versions_of_in(conn, &memory_id).await?;
                let last = prev
                    .into_iter()
                    .find(|v| v.version_id == old)
                    .ok_or_else(|| Error::internal("open version vanished inside the write"))?;
                store::close_version(conn, &old, now, now, "UPDATE").await?;
                let scope = crate::memory::Scope {
                    user_id: last.user_id.clone(),
                    agent_id: last.agent_id.clone(),
                    run_id: last.run_id.clone(),
                };
                let fact = Fact {
                    text: text.clone(),
                    key: last.slot.clone(),
                    retract: false,
                    relations,
                };
                let c = Checked {
                    scope,
                    turns: Vec::new(),
                    infer: false,
                    metadata: metadata.unwrap_or(last.metadata.clone()),
                    source: source.clone(),
                    observed_at: now,
                };
                let v = new_version(
                    &c,
                    now,
                    &model,
                    memory_id.clone(),
                    version + 1,
                    "UPDATE",
                    &fact,
                    vector,
                    last.created_at,
                    now,
                );
                store::insert_version(conn, &v).await?;
                if let Some(s) = &source {
                    store::add_source(conn, &memory_id, &v.version_id, "UPDATE", s, now, now).await?;
                }
                Ok(Change {
                    id: memory_id,
                    memory: text,
                    event: Event::Update,
                    previous_memory: Some(last.memory),
                })
            })
        })
        .await
}

/// Retires `memory_id` now.
pub(crate) async fn retire(m: &Memory, memory_id: &str, previous: String) -> Result<Change> {
    let now = m.now();
    let memory_id = memory_id.to_string();
    m.store()
        .write(move |conn| {
            Box::pin(async move {
                let Some((old, _, valid_from)) = store::open_version(conn, &memory_id).await? else {
                    return Err(Error::not_found("memory", &memory_id));
                };
                store::close_version(conn, &old, now.max(valid_from), now, "DELETE").await?;
                Ok(Change {
                    id: memory_id,
                    memory: previous,
                    event: Event::Delete,
                    previous_memory: None,
                })
            })
        })
        .await
}
