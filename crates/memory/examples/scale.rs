//! Search latency at scale: N synthetic memories in one scope, then timed searches.
//!
//! ```text
//! cargo run --release -p strata-memory [--features bert] --example scale -- [--memories 10000] [--queries 300] [--models DIR]
//! ```
//!
//! Memories are generated from templates (person × activity × place × time), so
//! they are distinct yet share vocabulary the way real ones do. Reports ingest
//! throughput and search p50/p95/p99, query embedding included (each query is
//! new text, so the query cache never answers).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use strata_core::SystemClock;
use strata_memory::{AddRequest, Config, Embedder, Memory, RuleExtractor, SearchRequest, Viewer};
use strata_store::{Options, Store};

const PEOPLE: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Luca", "Mina",
    "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tess",
];
const ACTIVITIES: &[&str] = &[
    "went hiking",
    "baked sourdough bread",
    "painted a sunrise",
    "adopted a puppy",
    "started a pottery class",
    "ran a half marathon",
    "visited a museum",
    "learned to play the cello",
    "planted tomatoes",
    "read a mystery novel",
    "fixed an old bicycle",
    "joined a book club",
    "volunteered at a shelter",
    "went camping",
    "wrote a short story",
    "cooked a Thai curry",
    "took a photography course",
    "built a treehouse",
    "went swimming",
    "attended a concert",
];
const PLACES: &[&str] = &[
    "in Lisbon",
    "near the lake",
    "at the community center",
    "in the mountains",
    "downtown",
    "at the beach",
    "in the garden",
    "at school",
    "in Berlin",
    "at the library",
    "in the park",
    "at home",
    "in Kyoto",
    "by the river",
    "at the gym",
    "in a small village",
    "at the office",
    "in Toronto",
    "on the island",
    "at the festival",
];
const WHEN: &[&str] = &[
    "last week",
    "yesterday",
    "in March",
    "two years ago",
    "last summer",
    "on Sunday",
    "this morning",
    "after work",
    "with friends",
    "with family",
    "alone",
    "for the first time",
    "again",
    "during the holidays",
    "before dawn",
    "in the rain",
    "on a whim",
    "as a gift",
    "to relax",
    "for charity",
];

fn memory_text(i: usize) -> String {
    let p = PEOPLE[i % PEOPLE.len()];
    let a = ACTIVITIES[(i / 20) % ACTIVITIES.len()];
    let l = PLACES[(i / 400) % PLACES.len()];
    let w = WHEN[(i / 8000 + i * 7) % WHEN.len()];
    format!("{p} {a} {l} {w} (note {i}).")
}

fn embedder(models: Option<String>) -> Option<Arc<dyn Embedder>> {
    let dir = models.or_else(|| std::env::var("STRATA_MODELS_DIR").ok())?;
    strata_memory::builtin_embedder(std::path::Path::new(&dir))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut n = 10_000usize;
    let mut queries = 300usize;
    let mut models = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--memories" => n = it.next().context("--memories N")?.parse()?,
            "--queries" => queries = it.next().context("--queries N")?.parse()?,
            "--models" => models = Some(it.next().context("--models DIR")?),
            other => anyhow::bail!("unexpected argument '{other}'"),
        }
    }
    let embedder = embedder(models);
    let mode = embedder
        .as_ref()
        .map_or("lexical+graph".to_string(), |e| format!("hybrid ({})", e.model()));
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        Options::new(strata_store::sqlite_url(dir.path())),
        &[strata_memory::MIGRATIONS],
    )
    .await?;
    let memory = Memory::open(
        store.clone(),
        Arc::new(SystemClock),
        Arc::new(RuleExtractor),
        embedder,
        Config::default(),
    )
    .await?;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<AddRequest> = chunk
            .iter()
            .map(|&i| serde_json::from_value(json!({"text": memory_text(i), "user_id": "u", "infer": false})))
            .collect::<Result<_, _>>()?;
        memory.add_many(batch, &Viewer::All).await?;
    }
    let ingest = started.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(queries);
    for q in 0..queries {
        let text = format!(
            "Who {} {} {}? ({q})",
            ACTIVITIES[(q * 3) % ACTIVITIES.len()],
            PLACES[(q * 7) % PLACES.len()],
            WHEN[(q * 11) % WHEN.len()]
        );
        let req: SearchRequest = serde_json::from_value(json!({"query": text, "user_id": "u", "top_k": 10}))?;
        let t = Instant::now();
        let hits = memory.search(req, &Viewer::All).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(!hits.results.is_empty(), "no hits for '{text}'");
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{} memories ({mode}): ingest {:.0} memories/s; search p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms over {queries} queries",
        memory.indexed(),
        n as f64 / ingest,
        pct(0.5),
        pct(0.95),
        pct(0.99)
    );
    store.close().await;
    Ok(())
}
