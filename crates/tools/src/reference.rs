//! Secret references in a connection's environment, headers and query.
//!
//! A value is either a JSON string, in which `${secret:NAME}` stands for the
//! secret's value (`"Bearer ${secret:API_TOKEN}"`), or an object
//! `{"secret": "NAME"}` standing for the whole value. A connection stores the
//! references, never the values; they are resolved when an upstream is started
//! or called, and everything resolved from a secret is remembered so that it can
//! be scrubbed from whatever comes back.

use std::collections::BTreeMap;

use serde_json::Value;
use strata_core::{Error, ErrorCode, Result};

use crate::vault::{SecretValue, check_name};

/// One piece of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Secret(String),
}

/// A value that may embed secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses a connection's value; `field` names it in errors.
    pub fn parse(field: &str, v: &Value) -> Result<Template> {
        match v {
            Value::String(s) => parse_str(field, s),
            Value::Object(o) if o.len() == 1 => match o.get("secret") {
                Some(Value::String(name)) => {
                    check_name(name).map_err(|e| bad(field, &e.detail))?;
                    Ok(Template(vec![Part::Secret(name.clone())]))
                }
                _ => Err(bad(field, "an object value must be {\"secret\": \"NAME\"}")),
            },
            Value::Number(n) => Ok(Template(vec![Part::Literal(n.to_string())])),
            Value::Bool(b) => Ok(Template(vec![Part::Literal(b.to_string())])),
            _ => Err(bad(
                field,
                "a value is a string (may contain ${secret:NAME}) or {\"secret\": \"NAME\"}",
            )),
        }
    }

    /// The secrets it refers to.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Secret(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The value with secrets filled in from `values`, which must hold each one.
    pub(crate) fn render(&self, values: &BTreeMap<String, SecretValue>) -> Result<Rendered> {
        let mut out = String::new();
        let mut secret = false;
        for p in &self.0 {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Secret(n) => {
                    let v = values.get(n).ok_or_else(|| {
                        Error::new(
                            ErrorCode::UnknownSecret,
                            format!("secret '{n}' is not in the vault"),
                        )
                    })?;
                    out.push_str(v.expose());
                    secret = true;
                }
            }
        }
        Ok(if secret {
            Rendered::Secret(SecretValue::new(out))
        } else {
            Rendered::Plain(out)
        })
    }
}

/// A resolved value: plain text, or text that holds a secret.
#[derive(Debug, Clone)]
pub(crate) enum Rendered {
    Plain(String),
    Secret(SecretValue),
}

impl Rendered {
    pub(crate) fn expose(&self) -> &str {
        match self {
            Rendered::Plain(s) => s,
            Rendered::Secret(s) => s.expose(),
        }
    }
}

fn bad(field: &str, why: &str) -> Error {
    Error::new(ErrorCode::InvalidConnection, format!("{field}: {why}"))
}

fn parse_str(field: &str, s: &str) -> Result<Template> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find("${secret:") {
        if at > 0 {
            parts.push(Part::Literal(rest[..at].to_string()));
        }
        let after = &rest[at + "${secret:".len()..];
        let end = after
            .find('}')
            .ok_or_else(|| bad(field, "'${secret:' without a closing '}'"))?;
        let name = &after[..end];
        check_name(name).map_err(|e| bad(field, &e.detail))?;
        parts.push(Part::Secret(name.to_string()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(Template(parts))
}

/// The secret values a call used, for scrubbing what comes back.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scrubber {
    values: Vec<SecretValue>,
}

/// What a scrubbed secret is replaced with.
pub const REDACTED: &str = "[redacted]";

impl Scrubber {
    /// Remembers `v` (and, for a rendered header such as `Bearer X`, that is the
    /// caller's business: add the secret itself too).
    pub(crate) fn add(&mut self, v: &SecretValue) {
        // Very short values would redact ordinary text; they are not secrets worth the name.
        if v.expose().len() >= 4 && !self.values.contains(v) {
            self.values.push(v.clone());
            // Longest first, so a value containing another is replaced whole.
            self.values.sort_by_key(|v| std::cmp::Reverse(v.expose().len()));
        }
    }

    /// Adds every value of `other`.
    pub(crate) fn extend(&mut self, other: &Scrubber) {
        for v in &other.values {
            self.add(v);
        }
    }

    /// Whether it holds no value.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether `s` contains a remembered value.
    pub(crate) fn finds(&self, s: &str) -> bool {
        self.values.iter().any(|v| {
            let escaped = Value::String(v.expose().to_string()).to_string();
            s.contains(v.expose()) || s.contains(escaped.trim_matches('"'))
        })
    }

    /// `s` with every remembered value replaced by [`REDACTED`].
    pub(crate) fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for v in &self.values {
            if out.contains(v.expose()) {
                out = out.replace(v.expose(), REDACTED);
            }
        }
        out
    }

    /// `v` with every string (and object key) scrubbed.
    pub(crate) fn json(&self, v: Value) -> Value {
        if self.values.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| (self.text(&k), self.json(x)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_parse_in_strings_and_objects() {
        let t = Template::parse("h", &json!("Bearer ${secret:TOKEN}")).unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), vec!["TOKEN"]);
        let t = Template::parse("h", &json!({"secret": "K"})).unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), vec!["K"]);
        assert!(Template::parse("h", &json!("${secret:BAD NAME}")).is_err());
        assert!(Template::parse("h", &json!("${secret:UNCLOSED")).is_err());
        assert!(Template::parse("h", &json!({"secret": 1})).is_err());
        assert_eq!(
            Template::parse("h", &json!("plain")).unwrap().secrets().count(),
            0
        );
    }

    #[test]
    fn rendering_fills_secrets_and_marks_the_result_secret() {
        let t = Template::parse("h", &json!("a ${secret:X} b")).unwrap();
        let mut vals = BTreeMap::new();
        vals.insert("X".to_string(), SecretValue::new("s3cr3t"));
        let r = t.render(&vals).unwrap();
        assert_eq!(r.expose(), "a s3cr3t b");
        assert!(matches!(r, Rendered::Secret(_)));
        assert!(t.render(&BTreeMap::new()).is_err());
    }

    #[test]
    fn scrubbing_replaces_values_in_nested_json() {
        let mut s = Scrubber::default();
        s.add(&SecretValue::new("s3cr3t"));
        let out = s.json(json!({"a": ["x s3cr3t y", {"s3cr3t": 1}]}));
        assert_eq!(out, json!({"a": ["x [redacted] y", {"[redacted]": 1}]}));
    }
}
