//! The in-process recall index: BM25 postings, vectors and the entity graph over
//! every version of every memory.
//!
//! The database is the truth; the index is a cache of it that works the same
//! on SQLite and PostgreSQL. It is built at open and brought up to date before
//! every read by fetching the versions whose `seq` is newer than the last one
//! seen (one indexed query, usually empty), so writes by other replicas of a
//! shared PostgreSQL are seen too. Versions are only appended or closed, so an
//! update is either a new entry or a new `valid_to` on an old one.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::embed;
use crate::filter::{Field, Filter, Subject};
use crate::store::{LinkRow, VersionRow};
use crate::term;

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;

/// One version as the index holds it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub row: VersionRow,
    len: u32,
}

/// Who is reading: everything, or one agent (its own memories and those granted to it).
#[derive(Debug, Clone)]
pub enum Viewer {
    /// An operator or the kernel itself: no restriction.
    All,
    /// An agent.
    Agent {
        /// The agent's id.
        agent_id: String,
        /// Memories granted to it by accepted handoffs.
        granted: HashSet<String>,
    },
}

impl Viewer {
    /// Whether this viewer may read a memory of `agent_id` with id `memory_id`.
    pub fn sees(&self, memory_id: &str, agent_id: Option<&str>) -> bool {
        match self {
            Viewer::All => true,
            Viewer::Agent {
                agent_id: me,
                granted,
            } => agent_id == Some(me.as_str()) || granted.contains(memory_id),
        }
    }
}

impl Subject for VersionRow {
    fn text(&self, field: &Field) -> Option<Option<&str>> {
        match field {
            Field::UserId => Some(self.user_id.as_deref()),
            Field::AgentId => Some(self.agent_id.as_deref()),
            Field::RunId => Some(self.run_id.as_deref()),
            Field::Id => Some(Some(self.memory_id.as_str())),
            _ => None,
        }
    }

    fn field(&self, field: &Field) -> Option<Value> {
        match field {
            Field::UserId => self.user_id.clone().map(Value::from),
            Field::AgentId => self.agent_id.clone().map(Value::from),
            Field::RunId => self.run_id.clone().map(Value::from),
            Field::Id => Some(Value::from(self.memory_id.clone())),
            Field::Memory => Some(Value::from(self.memory.clone())),
            Field::CreatedAt => Some(Value::from(self.created_at)),
            Field::UpdatedAt => Some(Value::from(self.recorded_at)),
            Field::ValidFrom => Some(Value::from(self.valid_from)),
            Field::ValidTo => self.valid_to.map(Value::from),
            Field::Metadata(path) => {
                let mut v = &self.metadata;
                for p in path {
                    v = v.get(p)?;
                }
                Some(v.clone())
            }
        }
    }
}

/// Which versions a read sees.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At {
    /// The current versions.
    Now,
    /// The versions valid at this instant (epoch ms).
    Past(i64),
}

impl At {
    fn admits(self, r: &VersionRow) -> bool {
        match self {
            At::Now => r.valid_to.is_none(),
            At::Past(t) => r.valid_from <= t && r.valid_to.is_none_or(|to| t < to),
        }
    }
}

/// The parts of a hit's score before fusion.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Signals {
    pub lexical: f32,
    pub vector: f32,
    pub graph: f32,
}

/// The recall index.
#[derive(Default)]
pub(crate) struct Index {
    seq: i64,
    entries: Vec<Entry>,
    by_version: HashMap<String, usize>,
    open: HashMap<String, usize>,
    vocab: HashMap<String, u32>,
    postings: Vec<Vec<(u32, u32)>>,
    total_len: u64,
    entity_ids: HashMap<String, u32>,
    entity_entries: Vec<Vec<u32>>,
    entity_edges: Vec<HashSet<u32>>,
    /// The model whose vectors are usable; vectors of another model are ignored.
    model: Option<String>,
    pending_links: HashMap<String, Vec<LinkRow>>,
    /// Every version of each scope (by scope key).
    scopes: HashMap<String, Vec<u32>>,
    /// Open versions by content hash (the hash covers the scope).
    open_hash: HashMap<String, u32>,
    /// Open versions by (scope key, slot key).
    open_slot: HashMap<(String, String), u32>,
}

impl Index {
    pub(crate) fn new(model: Option<String>) -> Index {
        Index {
            model,
            ..Index::default()
        }
    }

    /// The last change applied.
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    /// How many versions are indexed.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Applies changes fetched from the store (ordered by `seq`).
    pub(crate) fn apply(&mut self, rows: Vec<VersionRow>, links: Vec<LinkRow>) {
        for l in links {
            self.pending_links
                .entry(l.version_id.clone())
                .or_default()
                .push(l);
        }
        for mut row in rows {
            self.seq = self.seq.max(row.seq);
            if let Some(&i) = self.by_version.get(&row.version_id) {
                let e = &mut self.entries[i];
                e.row.valid_to = row.valid_to;
                e.row.closed_at = row.closed_at;
                e.row.closed_by = row.closed_by.take();
                if row.valid_to.is_some() {
                    if self.open.get(&e.row.memory_id) == Some(&i) {
                        self.open.remove(&e.row.memory_id);
                    }
                    if self.open_hash.get(&e.row.hash) == Some(&(i as u32)) {
                        self.open_hash.remove(&e.row.hash);
                    }
                    if let Some(slot) = &e.row.slot {
                        let key = (e.row.scope.clone(), slot.clone());
                        if self.open_slot.get(&key) == Some(&(i as u32)) {
                            self.open_slot.remove(&key);
                        }
                    }
                }
                continue;
            }
            if row.embed_model != self.model {
                row.embedding = None;
            }
            let i = self.entries.len();
            let idx = i as u32;
            let mut tf: HashMap<u32, u32> = HashMap::new();
            let terms = term::terms(&row.memory);
            for t in &terms {
                let next = self.vocab.len() as u32;
                let id = *self.vocab.entry(t.clone()).or_insert(next);
                if id as usize == self.postings.len() {
                    self.postings.push(Vec::new());
                }
                *tf.entry(id).or_default() += 1;
            }
            let mut terms_tf: Vec<(u32, u32)> = tf.into_iter().collect();
            terms_tf.sort_unstable();
            for &(t, n) in &terms_tf {
                self.postings[t as usize].push((idx, n));
            }
            self.total_len += terms.len() as u64;
            let mut entities = Vec::new();
            for l in self.pending_links.remove(&row.version_id).unwrap_or_default() {
                let s = self.entity(&l.subject);
                if !entities.contains(&s) {
                    entities.push(s);
                }
                if !l.object.is_empty() {
                    let o = self.entity(&l.object);
                    if !entities.contains(&o) {
                        entities.push(o);
                    }
                    if s != o {
                        self.entity_edges[s as usize].insert(o);
                        self.entity_edges[o as usize].insert(s);
                    }
                }
            }
            for &e in &entities {
                self.entity_entries[e as usize].push(idx);
            }
            if row.valid_to.is_none() {
                self.open.insert(row.memory_id.clone(), i);
                self.open_hash.insert(row.hash.clone(), idx);
                if let Some(slot) = &row.slot {
                    self.open_slot.insert((row.scope.clone(), slot.clone()), idx);
                }
            }
            self.scopes.entry(row.scope.clone()).or_default().push(idx);
            self.by_version.insert(row.version_id.clone(), i);
            self.entries.push(Entry {
                row,
                len: terms.len() as u32,
            });
        }
    }

    fn entity(&mut self, name: &str) -> u32 {
        let key = name.trim().to_lowercase();
        let next = self.entity_ids.len() as u32;
        let id = *self.entity_ids.entry(key).or_insert(next);
        if id as usize == self.entity_entries.len() {
            self.entity_entries.push(Vec::new());
            self.entity_edges.push(HashSet::new());
        }
        id
    }

    /// The versions a read at `at` by `viewer` through `filter` may see, in index order.
    pub(crate) fn eligible(&self, at: At, viewer: &Viewer, filter: &Filter) -> Vec<u32> {
        let run = filter.required_eq(&Field::RunId);
        let user = filter.required_eq(&Field::UserId);
        let agent = filter.required_eq(&Field::AgentId);
        let check = |e: &Entry| {
            let r = &e.row;
            at.admits(r)
                && run.is_none_or(|v| r.run_id.as_deref() == Some(v))
                && user.is_none_or(|v| r.user_id.as_deref() == Some(v))
                && agent.is_none_or(|v| r.agent_id.as_deref() == Some(v))
                && viewer.sees(&r.memory_id, r.agent_id.as_deref())
                && filter.matches(r)
        };
        match at {
            At::Now => {
                let mut v: Vec<u32> = self
                    .open
                    .values()
                    .filter(|&&i| check(&self.entries[i]))
                    .map(|&i| i as u32)
                    .collect();
                v.sort_unstable();
                v
            }
            At::Past(_) => (0..self.entries.len() as u32)
                .filter(|&i| check(&self.entries[i as usize]))
                .collect(),
        }
    }

    /// The entry at `i`.
    pub(crate) fn entry(&self, i: u32) -> &VersionRow {
        &self.entries[i as usize].row
    }

    /// The lexical, vector and graph signals of every eligible version that has one,
    /// and the upper bound of the lexical signal for this query (Σ idf·(k1 + 1)
    /// over its distinct known terms; BM25 of a term stays below idf·(k1 + 1)).
    pub(crate) fn signals(
        &self,
        eligible: &[u32],
        query: &str,
        query_vec: Option<&[f32]>,
    ) -> (HashMap<u32, Signals>, f32) {
        let mut allowed = vec![false; self.entries.len()];
        for &i in eligible {
            allowed[i as usize] = true;
        }
        let mut out: HashMap<u32, Signals> = HashMap::new();
        // Lexical: BM25 over every version (idf from all of them).
        let n = self.entries.len().max(1) as f32;
        let avg = (self.total_len as f32 / n).max(1.0);
        let mut seen = HashSet::new();
        let mut bound = 0.0_f32;
        for t in term::terms(query) {
            let Some(&id) = self.vocab.get(&t) else { continue };
            if !seen.insert(id) {
                continue;
            }
            let post = &self.postings[id as usize];
            let df = post.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            bound += idf * (K1 + 1.0);
            for &(doc, tf) in post {
                if !allowed[doc as usize] {
                    continue;
                }
                let len = self.entries[doc as usize].len as f32;
                let tf = tf as f32;
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
                out.entry(doc).or_default().lexical += s;
            }
        }
        // Dense: cosine with every eligible version that has a vector of this model.
        if let Some(q) = query_vec {
            for &doc in eligible {
                if let Some(v) = &self.entries[doc as usize].row.embedding {
                    let c = embed::dot(q, v);
                    if c > 0.0 {
                        out.entry(doc).or_default().vector = c;
                    }
                }
            }
        }
        // Graph: entities named in the query (matched as word n-grams), weighted by
        // rarity; their direct neighbours count half.
        let words = term::words(query);
        let mut named: HashMap<u32, f32> = HashMap::new();
        for len in 1..=3usize {
            for w in words.windows(len) {
                if let Some(&e) = self.entity_ids.get(&w.join(" ")) {
                    let deg = self.entity_entries[e as usize].len() as f32;
                    let weight = 1.0 / (2.0 + deg).ln();
                    named.insert(e, weight);
                }
            }
        }
        let mut reach: HashMap<u32, f32> = named.clone();
        for (&e, &w) in &named {
            for &nb in &self.entity_edges[e as usize] {
                let entry = reach.entry(nb).or_insert(0.0);
                *entry = entry.max(w * 0.5);
            }
        }
        for (&e, &w) in &reach {
            for &doc in &self.entity_entries[e as usize] {
                if allowed[doc as usize] {
                    out.entry(doc).or_default().graph += w;
                }
            }
        }
        (out, bound)
    }

    /// The open version with exactly this content hash (which covers the scope).
    pub(crate) fn open_with_hash(&self, hash: &str) -> Option<&VersionRow> {
        self.open_hash.get(hash).map(|&i| &self.entries[i as usize].row)
    }

    /// The open version of a scope holding a slot key.
    pub(crate) fn open_with_slot(&self, scope: &str, slot: &str) -> Option<&VersionRow> {
        self.open_slot
            .get(&(scope.to_string(), slot.to_string()))
            .map(|&i| &self.entries[i as usize].row)
    }

    /// The open versions of one scope nearest to `text`, for reconciliation: the
    /// `k` best lexical matches and, with a vector, the `k` best dense ones.
    pub(crate) fn nearest(&self, scope: &str, text: &str, vec: Option<&[f32]>, k: usize) -> Vec<&VersionRow> {
        let Some(members) = self.scopes.get(scope) else {
            return Vec::new();
        };
        let open = |i: u32| self.entries[i as usize].row.valid_to.is_none();
        let n = self.entries.len().max(1) as f32;
        let avg = (self.total_len as f32 / n).max(1.0);
        let mut lex: HashMap<u32, f32> = HashMap::new();
        let mut seen = HashSet::new();
        for t in term::terms(text) {
            let Some(&id) = self.vocab.get(&t) else { continue };
            if !seen.insert(id) {
                continue;
            }
            let post = &self.postings[id as usize];
            let df = post.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(doc, tf) in post {
                let e = &self.entries[doc as usize];
                if e.row.scope != scope || !open(doc) {
                    continue;
                }
                let tf = tf as f32;
                *lex.entry(doc).or_default() +=
                    idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * e.len as f32 / avg));
            }
        }
        let mut by_lex: Vec<(u32, f32)> = lex.into_iter().collect();
        by_lex.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut out: Vec<u32> = by_lex.into_iter().take(k).map(|x| x.0).collect();
        if let Some(q) = vec {
            let mut by_vec: Vec<(u32, f32)> = members
                .iter()
                .filter(|&&i| open(i))
                .filter_map(|&i| {
                    let v = self.entries[i as usize].row.embedding.as_ref()?;
                    Some((i, embed::dot(q, v)))
                })
                .collect();
            by_vec.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (d, _) in by_vec.into_iter().take(k) {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out.into_iter().map(|i| &self.entries[i as usize].row).collect()
    }

    /// Versions that lack a vector of the current model (to embed after a model change).
    pub(crate) fn missing_vectors(&self) -> usize {
        if self.model.is_none() {
            return 0;
        }
        self.open
            .values()
            .filter(|&&i| self.entries[i].row.embedding.is_none())
            .count()
    }

    /// Open versions without a vector of the current model: (version id, text).
    pub(crate) fn unembedded(&self, limit: usize) -> Vec<(String, String)> {
        if self.model.is_none() {
            return Vec::new();
        }
        self.open
            .values()
            .filter(|&&i| self.entries[i].row.embedding.is_none())
            .take(limit)
            .map(|&i| {
                (
                    self.entries[i].row.version_id.clone(),
                    self.entries[i].row.memory.clone(),
                )
            })
            .collect()
    }

    /// Sets the vector of a version (computed after a model change; memory only).
    pub(crate) fn set_vector(&mut self, version_id: &str, v: Vec<f32>) {
        if let Some(&i) = self.by_version.get(version_id) {
            self.entries[i].row.embedding = Some(v);
        }
    }
}
