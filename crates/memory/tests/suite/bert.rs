//! The built-in model (feature `bert`), loaded from `STRATA_MODELS_DIR` (see
//! `crates/memory/scripts/fetch-model`; CI fetches it). Outside CI a missing
//! model skips these tests loudly; in CI it fails them.

use std::sync::Arc;

use serde_json::json;
use strata_core::ManualClock;
use strata_memory::bert::{BertEmbedder, locate};
use strata_memory::embed::dot;
use strata_memory::{Config, Embedder, Memory, RuleExtractor, SearchRequest, Viewer};
use strata_store::{Backend, Options, Store};

use crate::suite::harness::{T0, add_req};

fn model() -> Option<BertEmbedder> {
    let dir = std::env::var("STRATA_MODELS_DIR")
        .ok()
        .map(std::path::PathBuf::from);
    match dir.as_deref().and_then(locate) {
        Some(path) => Some(BertEmbedder::load(&path).expect("the model in STRATA_MODELS_DIR loads")),
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "STRATA_MODELS_DIR does not hold all-MiniLM-L6-v2; CI must run crates/memory/scripts/fetch-model"
            )
        }
        None => {
            eprintln!(
                "SKIPPED: the embedding model is not present; run crates/memory/scripts/fetch-model DIR \
                 and set STRATA_MODELS_DIR=DIR to run the model tests"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_vectors_are_unit_length_and_rank_paraphrases_above_unrelated_text() {
    let Some(m) = model() else { return };
    let texts: Vec<String> = [
        "A man is playing a guitar.",
        "Someone strums an acoustic guitar.",
        "The stock market fell sharply today.",
        "A man is playing a guitar.",
    ]
    .map(String::from)
    .to_vec();
    let v = m.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 4);
    assert_eq!(v[0].len(), 384);
    for x in &v {
        assert!((dot(x, x) - 1.0).abs() < 1e-4);
    }
    let para = dot(&v[0], &v[1]);
    let other = dot(&v[0], &v[2]);
    assert!(
        para > 0.4 && other < 0.25 && para > other + 0.25,
        "paraphrase {para}, unrelated {other}"
    );
    assert!(
        dot(&v[0], &v[3]) > 0.9999,
        "padding in a batch does not change a text's vector"
    );
    let alone = m.embed(&texts[..1]).await.unwrap();
    assert!(
        dot(&alone[0], &v[0]) > 0.9999,
        "batched and single embeddings agree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_search_finds_a_memory_by_meaning_with_no_word_in_common() {
    let Some(m) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = strata_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let store = Store::open(Options::new(&url), &[strata_memory::MIGRATIONS])
        .await
        .unwrap();
    let memory = Memory::open(
        store,
        Arc::new(ManualClock::new(T0)),
        Arc::new(RuleExtractor),
        Some(Arc::new(m)),
        Config::default(),
    )
    .await
    .unwrap();
    for t in [
        "I adopted a puppy last week.",
        "I repaired the kitchen sink.",
        "I booked flights to Japan.",
    ] {
        memory
            .add(add_req(json!({"text": t, "user_id": "u"})), &Viewer::All)
            .await
            .unwrap();
    }
    let q: SearchRequest =
        serde_json::from_value(json!({"query": "Does someone own a dog?", "user_id": "u"})).unwrap();
    let hits = memory.search(q, &Viewer::All).await.unwrap().results;
    assert!(
        hits[0].memory.contains("puppy"),
        "got {:?}",
        hits.iter().map(|h| &h.memory).collect::<Vec<_>>()
    );
    let parts = hits[0].score_parts.unwrap();
    assert_eq!(parts.lexical, 0.0, "no shared word: the vector found it");
    assert!(parts.vector > 0.25, "cosine {}", parts.vector);
}
