//! Embeddings: dense vectors for meaning-level recall.
//!
//! [`Embedder`] is the seam. Behind it: the built-in all-MiniLM-L6-v2 model run
//! on the CPU with candle (feature `bert`, [`crate::bert::BertEmbedder`], loaded
//! from a models folder; nothing is downloaded at run time), and any
//! OpenAI-compatible `/v1/embeddings` endpoint ([`HttpEmbedder`]). With no
//! embedder the layer still works on lexical, graph and recency signals.
//!
//! Vectors are L2-normalised, so cosine similarity is a dot product.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use serde::Deserialize;
use strata_core::{Error, ErrorCode, Result};

/// Turns texts into vectors.
pub trait Embedder: Send + Sync + 'static {
    /// The model's name, stored beside each vector (a change of model re-embeds).
    fn model(&self) -> &str;

    /// One unit-length vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>>;
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The dot product (cosine similarity for unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// An OpenAI-compatible embeddings endpoint (`POST {base}/embeddings`).
#[derive(Debug, Clone)]
pub struct HttpEmbedder {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    model: String,
}

impl HttpEmbedder {
    /// An embedder posting to `base_url` (e.g. `http://127.0.0.1:8080/v1`) for `model`,
    /// with `api_key` as a bearer token when given.
    pub fn new(
        base_url: impl Into<String>,
        api_key: Option<String>,
        model: impl Into<String>,
    ) -> HttpEmbedder {
        HttpEmbedder {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key,
            model: model.into(),
        }
    }
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

fn failed(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::EmbedderFailed, why.to_string())
}

impl Embedder for HttpEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let mut req = self
                .client
                .post(format!("{}/embeddings", self.base_url))
                .json(&serde_json::json!({"model": self.model, "input": texts}));
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| failed(format!("embeddings request: {e}")))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(failed(format!("embeddings endpoint answered {status}")));
            }
            let body: EmbeddingsResponse = resp
                .json()
                .await
                .map_err(|e| failed(format!("embeddings response: {e}")))?;
            if body.data.len() != texts.len() {
                return Err(failed(format!(
                    "asked for {} embeddings, got {}",
                    texts.len(),
                    body.data.len()
                )));
            }
            let mut out = vec![Vec::new(); texts.len()];
            for (i, item) in body.data.into_iter().enumerate() {
                let at = item.index.unwrap_or(i);
                let slot = out
                    .get_mut(at)
                    .ok_or_else(|| failed("embedding index out of range"))?;
                *slot = item.embedding;
                normalise(slot);
            }
            Ok(out)
        })
    }
}

/// Remembers the vectors of recent queries, so a repeated query costs no model call.
pub(crate) struct QueryCache {
    entries: Mutex<HashMap<String, Vec<f32>>>,
    capacity: usize,
}

impl QueryCache {
    pub(crate) fn new(capacity: usize) -> QueryCache {
        QueryCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub(crate) fn get(&self, q: &str) -> Option<Vec<f32>> {
        self.entries.lock().ok()?.get(q).cloned()
    }

    pub(crate) fn put(&self, q: &str, v: Vec<f32>) {
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= self.capacity {
                // Crude but bounded: start over when full.
                m.clear();
            }
            m.insert(q.to_string(), v);
        }
    }
}
