//! `strata bench memory --locomo FILE`: LoCoMo evidence recall of the memory
//! layer, against plain BM25 over raw turns and the full conversation.
//!
//! Each conversation is ingested session by session into a fresh store: every
//! turn is one add whose `source` is `{"dia_id": …}` and whose `observed_at` is
//! the session's date. Then every question of categories 1–4 searches the
//! conversation's speaker-agnostic scope (`run_id` = the sample id). Reported:
//! evidence recall@5/10/25 (the share of a question's evidence turns that the
//! top-k memories link back to through their sources, averaged over questions),
//! context tokens per query for the top k (whitespace words × 1.3), ingest time
//! and throughput, and search latency p50/p95 (query embedding included). The
//! same figures come for BM25 over the raw turns and for the full conversation,
//! and Strata's for each conversation on its own (indented under the totals).
//!
//! The layer is driven in-process (no HTTP), so the figures are the memory
//! engine's own. With the built-in model in `--models-dir` (or
//! `STRATA_MODELS_DIR`; a build with the `bert` feature, the default) dense
//! vectors take part; otherwise recall is lexical + graph only.
//!
//! The LoCoMo data (CC BY-NC 4.0) is not part of this repository.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use strata_core::SystemClock;
use strata_memory::{AddRequest, Config, Memory, RuleExtractor, SearchRequest, Viewer, term};
use strata_store::{Options, Store};

/// Arguments of `strata bench memory`.
#[derive(Args, Debug)]
pub(crate) struct MemoryArgs {
    /// The LoCoMo JSON file (a list of conversations with their questions).
    #[arg(long, value_name = "FILE")]
    locomo: PathBuf,
    /// Only the first N conversations.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Folder holding the embedding model (`all-MiniLM-L6-v2/`); none: lexical + graph only.
    #[arg(long, env = "STRATA_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Print the first N questions whose evidence the top 10 missed, with what was found.
    #[arg(long, value_name = "N", default_value_t = 0)]
    misses: usize,
}

const KS: [usize; 3] = [5, 10, 25];

#[derive(Default)]
struct Tally {
    questions: usize,
    recall: [f64; 3],
    tokens: [f64; 3],
    latencies_ms: Vec<f64>,
}

impl Tally {
    fn add(&mut self, evidence: &HashSet<String>, ranked: &[(HashSet<String>, usize)], ms: f64) {
        self.questions += 1;
        self.latencies_ms.push(ms);
        for (i, &k) in KS.iter().enumerate() {
            let top = &ranked[..ranked.len().min(k)];
            let found: HashSet<&String> = top.iter().flat_map(|(ids, _)| ids.iter()).collect();
            let hit = evidence.iter().filter(|e| found.contains(e)).count();
            self.recall[i] += hit as f64 / evidence.len() as f64;
            self.tokens[i] += top.iter().map(|(_, t)| *t).sum::<usize>() as f64;
        }
    }

    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    fn json(&self) -> Value {
        let n = self.questions.max(1) as f64;
        json!({
            "questions": self.questions,
            "recall@5": self.recall[0] / n, "recall@10": self.recall[1] / n, "recall@25": self.recall[2] / n,
            "tokens@5": self.tokens[0] / n, "tokens@10": self.tokens[1] / n, "tokens@25": self.tokens[2] / n,
            "search_p50_ms": self.pct(0.5), "search_p95_ms": self.pct(0.95),
        })
    }
}

/// "1:56 pm on 8 May, 2023" → RFC 3339.
fn session_time(s: &str) -> Result<String> {
    let (clock, date) = s.split_once(" on ").context("no ' on ' in the session date")?;
    let clock = clock.trim().to_lowercase();
    let pm = clock.ends_with("pm");
    let hm = clock.trim_end_matches("am").trim_end_matches("pm").trim();
    let (h, m) = hm.split_once(':').context("no h:mm")?;
    let mut h: u32 = h.trim().parse()?;
    let m: u32 = m.trim().parse()?;
    if pm && h != 12 {
        h += 12;
    } else if !pm && h == 12 {
        h = 0;
    }
    let parts: Vec<&str> = date.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let [day, month, year] = parts[..] else {
        bail!("date '{date}' is not 'D Month, YYYY'")
    };
    let month = strata_memory::calendar::month(month).context("unknown month")?;
    Ok(format!(
        "{year}-{month:02}-{:02}T{h:02}:{m:02}:00Z",
        day.parse::<u32>()?
    ))
}

fn turn_text(t: &Value) -> String {
    let text = t["text"].as_str().unwrap_or("").to_string();
    match t["blip_caption"].as_str() {
        Some(c) if !c.is_empty() => format!("{text} [shares a photo of {c}]"),
        _ => text,
    }
}

/// BM25 over raw turns: the naive chunk-RAG baseline.
struct TurnIndex {
    docs: Vec<(String, HashMap<String, u32>, usize, usize)>,
    df: HashMap<String, u32>,
    avg: f64,
}

impl TurnIndex {
    fn new(turns: &[(String, String)]) -> TurnIndex {
        let mut docs = Vec::new();
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut total = 0;
        for (id, text) in turns {
            let terms = term::terms(text);
            let mut tf: HashMap<String, u32> = HashMap::new();
            for t in &terms {
                *tf.entry(t.clone()).or_default() += 1;
            }
            for t in tf.keys() {
                *df.entry(t.clone()).or_default() += 1;
            }
            total += terms.len();
            docs.push((id.clone(), tf, terms.len(), term::token_cost(text)));
        }
        let avg = total as f64 / docs.len().max(1) as f64;
        TurnIndex { docs, df, avg }
    }

    fn search(&self, q: &str, k: usize) -> Vec<(HashSet<String>, usize)> {
        let n = self.docs.len() as f64;
        let qt: HashSet<String> = term::terms(q).into_iter().collect();
        let mut scored: Vec<(f64, usize)> = self
            .docs
            .iter()
            .enumerate()
            .map(|(i, (_, tf, len, _))| {
                let s: f64 = qt
                    .iter()
                    .filter_map(|t| {
                        let f = f64::from(*tf.get(t)?);
                        let df = f64::from(*self.df.get(t)?);
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        Some(idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * *len as f64 / self.avg)))
                    })
                    .sum();
                (s, i)
            })
            .filter(|(s, _)| *s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .take(k)
            .map(|(_, i)| (HashSet::from([self.docs[i].0.clone()]), self.docs[i].3))
            .collect()
    }
}

pub(crate) async fn run(args: MemoryArgs) -> Result<ExitCode> {
    let file = args.locomo.display().to_string();
    let limit = args.limit.unwrap_or(usize::MAX);
    let as_json = args.json;
    let mut misses = args.misses;
    let embedder = args
        .models_dir
        .as_deref()
        .and_then(strata_memory::builtin_embedder);
    let data: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&args.locomo).with_context(|| format!("cannot read {file}"))?)
            .with_context(|| format!("{file} is not a LoCoMo JSON file"))?;
    let mode = embedder
        .as_ref()
        .map_or("lexical+graph".to_string(), |e| format!("hybrid ({})", e.model()));

    let (mut strata, mut bm25, mut full) = (Tally::default(), Tally::default(), Tally::default());
    let (mut turns_total, mut ingest_secs, mut memories) = (0usize, 0.0f64, 0usize);
    let mut per_conv: Vec<(String, Tally)> = Vec::new();
    for conv in data.iter().take(limit) {
        let sample = conv["sample_id"].as_str().unwrap_or("conv").to_string();
        let c = &conv["conversation"];
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
            embedder.clone(),
            Config::default(),
        )
        .await?;
        let mut raw: Vec<(String, String)> = Vec::new();
        let started = Instant::now();
        for n in 1.. {
            let Some(session) = c[format!("session_{n}")].as_array() else {
                if c.get(format!("session_{}_date_time", n + 1)).is_some() {
                    continue;
                }
                break;
            };
            let when = session_time(c[format!("session_{n}_date_time")].as_str().unwrap_or(""))?;
            let mut batch = Vec::new();
            for t in session {
                let speaker = t["speaker"].as_str().unwrap_or("someone");
                let dia = t["dia_id"].as_str().unwrap_or("");
                let text = turn_text(t);
                raw.push((dia.to_string(), format!("{speaker}: {text}")));
                let req: AddRequest = serde_json::from_value(json!({
                    "messages": [{"role": "user", "name": speaker, "content": text}],
                    "run_id": sample, "source": {"dia_id": dia}, "observed_at": when,
                }))?;
                batch.push(req);
            }
            turns_total += batch.len();
            memory.add_many(batch, &Viewer::All).await?;
        }
        ingest_secs += started.elapsed().as_secs_f64();
        memories += memory.indexed();
        let baseline = TurnIndex::new(&raw);
        let full_tokens: usize = raw.iter().map(|(_, t)| term::token_cost(t)).sum();
        let mut this_conv = Tally::default();
        for qa in conv["qa"].as_array().into_iter().flatten() {
            let cat = qa["category"].as_i64().unwrap_or(0);
            if !(1..=4).contains(&cat) {
                continue;
            }
            let evidence: HashSet<String> = qa["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .flat_map(|e| {
                    e.split([';', ','])
                        .map(|p| p.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .filter(|e| !e.is_empty())
                .collect();
            if evidence.is_empty() {
                continue;
            }
            let q = qa["question"].as_str().unwrap_or("").to_string();
            let t = Instant::now();
            let req: SearchRequest =
                serde_json::from_value(json!({"query": q, "run_id": sample, "top_k": 25}))?;
            let hits = memory.search(req, &Viewer::All).await?.results;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let ranked: Vec<(HashSet<String>, usize)> = hits
                .iter()
                .map(|h| {
                    let ids = h
                        .sources
                        .iter()
                        .filter_map(|s| s["dia_id"].as_str().map(str::to_string))
                        .collect();
                    (ids, term::token_cost(&h.memory))
                })
                .collect();
            strata.add(&evidence, &ranked, ms);
            this_conv.add(&evidence, &ranked, ms);
            let found: HashSet<&String> = ranked.iter().take(10).flat_map(|(ids, _)| ids.iter()).collect();
            if misses > 0 && evidence.iter().any(|e| !found.contains(e)) {
                misses -= 1;
                println!("MISS [{cat}] {q}");
                for e in &evidence {
                    let text = raw
                        .iter()
                        .find(|(id, _)| id == e)
                        .map_or("?", |(_, t)| t.as_str());
                    println!(
                        "   evidence {e}{}: {text}",
                        if found.contains(e) { " (found)" } else { "" }
                    );
                }
                for h in hits.iter().take(3) {
                    println!(
                        "   got {:.3} {:?}: {}",
                        h.score.unwrap_or(0.0),
                        h.score_parts.map(|p| (p.lexical, p.vector, p.graph)),
                        h.memory
                    );
                }
            }
            let t = Instant::now();
            let turns = baseline.search(&q, 25);
            bm25.add(&evidence, &turns, t.elapsed().as_secs_f64() * 1000.0);
            let everything = vec![(raw.iter().map(|(id, _)| id.clone()).collect(), full_tokens)];
            full.add(&evidence, &everything, 0.0);
        }
        store.close().await;
        per_conv.push((sample, this_conv));
    }
    let report = json!({
        "file": file, "mode": mode, "conversations": data.len().min(limit), "turns": turns_total,
        "memory_versions": memories, "ingest_s": ingest_secs,
        "ingest_turns_per_s": turns_total as f64 / ingest_secs.max(1e-9),
        "strata": strata.json(), "bm25_turns": bm25.json(), "full_context": full.json(),
        "strata_per_conversation": per_conv.iter().map(|(s, t)| json!({"sample_id": s, "figures": t.json()})).collect::<Vec<_>>(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "LoCoMo {} — {} conversations, {} turns, {} memory versions, {} questions (categories 1-4), mode {}",
        report["file"].as_str().unwrap_or(""),
        report["conversations"],
        turns_total,
        memories,
        strata.questions,
        mode
    );
    println!(
        "ingest: {ingest_secs:.1} s, {:.0} turns/s",
        report["ingest_turns_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "system", "R@5", "R@10", "R@25", "tok@5", "tok@10", "tok@25", "p50 ms", "p95 ms"
    );
    let rows = [
        ("strata".to_string(), &strata),
        ("bm25 turns".to_string(), &bm25),
        ("full context".to_string(), &full),
    ];
    let convs = per_conv.iter().map(|(s, t)| (format!("  {s}"), t));
    for (name, t) in rows.into_iter().chain(convs) {
        let j = t.json();
        let f = |k: &str| j[k].as_f64().unwrap_or(0.0);
        println!(
            "{:<14} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>9.0} {:>9.0} {:>8.2} {:>8.2}",
            name,
            f("recall@5"),
            f("recall@10"),
            f("recall@25"),
            f("tokens@5"),
            f("tokens@10"),
            f("tokens@25"),
            f("search_p50_ms"),
            f("search_p95_ms")
        );
    }
    Ok(ExitCode::SUCCESS)
}
