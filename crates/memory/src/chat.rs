//! Extraction by an OpenAI-compatible chat model (`POST {base}/chat/completions`).
//!
//! The model is asked for JSON: `{"facts": [{"text", "key"?, "retract"?,
//! "entities"?}]}`. Its answer is checked, never trusted: texts are trimmed and
//! bounded, keys lowercased, and anything unreadable is an `extractor_failed`
//! error rather than a silent empty result. The reconciler (add, update, delete,
//! none) is the same as for the rule extractor.

use futures::future::BoxFuture;
use serde::Deserialize;
use strata_core::{Error, ErrorCode, Result};

use crate::extract::{Extractor, Fact, Relation, Turn};

const PROMPT: &str = "You extract durable facts for a long-term memory. From the conversation, list \
atomic, self-contained facts worth remembering, written in the third person with the speaker's name \
instead of I/me/my, with relative dates resolved against the observation date given. Skip greetings \
and small talk. For a fact that has one current value (where someone lives or works, their name, age, \
a favourite, whether they like something), give a stable lowercase key such as \"ana|lives_in\" or \
\"ana|preference|sushi\"; when the speaker says such a fact stopped being true, set \"retract\": true. \
List named entities of each fact. Answer only with JSON: {\"facts\": [{\"text\": str, \"key\": str|null, \
\"retract\": bool, \"entities\": [str]}]}";

/// The longest fact text accepted from a model.
const MAX_FACT_CHARS: usize = 2_000;
/// The most facts accepted from one answer.
const MAX_FACTS: usize = 100;

/// An extractor backed by a chat model.
#[derive(Debug, Clone)]
pub struct ChatExtractor {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    model: String,
    name: String,
}

impl ChatExtractor {
    /// Posts to `base_url` (e.g. `http://127.0.0.1:11434/v1`) with `model`, sending
    /// `api_key` as a bearer token when given.
    pub fn new(
        base_url: impl Into<String>,
        api_key: Option<String>,
        model: impl Into<String>,
    ) -> ChatExtractor {
        let model = model.into();
        ChatExtractor {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .unwrap_or_default(),
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key,
            name: format!("chat:{model}"),
            model,
        }
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    facts: Vec<AnswerFact>,
}

#[derive(Deserialize)]
struct AnswerFact {
    text: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    retract: bool,
    #[serde(default)]
    entities: Vec<String>,
}

fn failed(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::ExtractorFailed, why.to_string())
}

/// Reads the model's answer: JSON, possibly wrapped in a Markdown code fence.
fn parse_answer(content: &str) -> Result<Vec<Fact>> {
    let body = content.trim();
    let body = body
        .strip_prefix("```json")
        .or_else(|| body.strip_prefix("```"))
        .map(|b| b.trim_end().trim_end_matches("```"))
        .unwrap_or(body);
    let answer: Answer = serde_json::from_str(body.trim())
        .map_err(|e| failed(format!("the model's answer is not the asked JSON: {e}")))?;
    let mut out = Vec::new();
    for f in answer.facts.into_iter().take(MAX_FACTS) {
        let text: String = f.text.trim().chars().take(MAX_FACT_CHARS).collect();
        if text.is_empty() {
            continue;
        }
        let relations = f
            .entities
            .into_iter()
            .map(|e| e.trim().chars().take(200).collect::<String>())
            .filter(|e| !e.is_empty())
            .map(|e| Relation {
                subject: e,
                relation: "mentions".into(),
                object: String::new(),
            })
            .collect();
        out.push(Fact {
            text,
            key: f
                .key
                .map(|k| k.trim().to_lowercase().chars().take(200).collect::<String>())
                .filter(|k| !k.is_empty()),
            retract: f.retract,
            relations,
        });
    }
    Ok(out)
}

impl Extractor for ChatExtractor {
    fn name(&self) -> &str {
        &self.name
    }

    fn extract<'a>(&'a self, turns: &'a [Turn], observed_at: i64) -> BoxFuture<'a, Result<Vec<Fact>>> {
        Box::pin(async move {
            let transcript: String = turns
                .iter()
                .map(|t| format!("{}: {}\n", t.speaker, t.text))
                .collect();
            let user = format!(
                "Observation date: {}\n\nConversation:\n{transcript}",
                strata_core::time::rfc3339(observed_at)
            );
            let body = serde_json::json!({
                "model": self.model,
                "temperature": 0,
                "response_format": {"type": "json_object"},
                "messages": [
                    {"role": "system", "content": PROMPT},
                    {"role": "user", "content": user},
                ],
            });
            let mut req = self
                .client
                .post(format!("{}/chat/completions", self.base_url))
                .json(&body);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| failed(format!("chat request: {e}")))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(failed(format!("chat endpoint answered {status}")));
            }
            let completion: Completion = resp
                .json()
                .await
                .map_err(|e| failed(format!("chat response: {e}")))?;
            let content = completion
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
                .ok_or_else(|| failed("the chat response has no message content"))?;
            parse_answer(&content)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_code_fences_parse_and_junk_is_an_error() {
        let f = parse_answer("```json\n{\"facts\": [{\"text\": \" Ana lives in Oslo \", \"key\": \"Ana|Lives_In\"}, {\"text\": \"\"}]}\n```")
            .expect("fenced JSON parses");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].text, "Ana lives in Oslo");
        assert_eq!(f[0].key.as_deref(), Some("ana|lives_in"));
        let e = parse_answer("Sure! Here are the facts: ...").unwrap_err();
        assert_eq!(e.code, ErrorCode::ExtractorFailed);
    }
}
