//! OpenAPI 3 upstreams: every operation of a document becomes a tool.
//!
//! A tool's input schema is an object with one property per path, query and
//! header parameter (named as the parameter) and `body` for a JSON request body;
//! required parameters and a required body are `required`, and nothing else is
//! allowed. Schemas the document keeps under `components/schemas` are copied into
//! `$defs` (only those an operation reaches) so the tool's schema stands alone;
//! OpenAPI 3.0's `nullable` becomes a JSON Schema `null` type. `GET`, `HEAD`,
//! `PUT`, `DELETE` and `OPTIONS` are idempotent by HTTP's definition.
//!
//! A call fills the path, query, headers and body from the arguments, adds the
//! connection's own headers and query (with secrets), reads at most the cap of
//! the response body, and answers in the shape of an MCP tool result.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use strata_core::{Error, ErrorCode, Result};

use crate::catalog::ToolDef;
use crate::mcp::Fault;
use crate::reference::Rendered;

/// The most bytes a fetched document may have.
const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// Where an operation's parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum In {
    Path,
    Query,
    Header,
}

/// One parameter of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Param {
    pub(crate) name: String,
    #[serde(rename = "in")]
    pub(crate) location: In,
}

/// How to call one operation (kept as the tool's binding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Operation {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) params: Vec<Param>,
    /// The argument holding the JSON body, if the operation takes one.
    pub(crate) body: Option<String>,
    /// Where calls go.
    pub(crate) base_url: String,
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidConnection, format!("openapi: {why}"))
}

/// Reads a document given inline: a JSON object, or a string of JSON or YAML.
pub(crate) fn parse_document(v: &Value) -> Result<Value> {
    let doc = match v {
        Value::Object(_) => v.clone(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => v,
            Err(_) => serde_yaml_ng::from_str::<Value>(s)
                .map_err(|e| bad(format!("the document is neither JSON nor YAML: {e}")))?,
        },
        _ => return Err(bad("the document must be an object or a JSON/YAML string")),
    };
    match doc.get("openapi").and_then(Value::as_str) {
        Some(ver) if ver.starts_with("3.") => Ok(doc),
        Some(ver) => Err(bad(format!("version {ver} is not supported (OpenAPI 3.x only)"))),
        None if doc.get("swagger").is_some() => Err(bad("Swagger 2.0 is not supported (OpenAPI 3.x only)")),
        None => Err(bad("the document has no 'openapi' version field")),
    }
}

/// Fetches a document from `url`, at most [`MAX_DOCUMENT_BYTES`].
pub(crate) async fn fetch_document(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<Value> {
    let resp = tokio::time::timeout(timeout, http.get(url).send())
        .await
        .map_err(|_| Error::new(ErrorCode::UpstreamTimeout, format!("fetching {url} timed out")))?
        .map_err(|e| {
            Error::new(
                ErrorCode::UpstreamFailed,
                format!("fetching {url}: {}", crate::http_error(e)),
            )
        })?;
    if !resp.status().is_success() {
        return Err(Error::new(
            ErrorCode::UpstreamFailed,
            format!("fetching {url}: HTTP {}", resp.status().as_u16()),
        ));
    }
    let body = read_capped(resp, MAX_DOCUMENT_BYTES, timeout)
        .await
        .map_err(|f| Error::new(ErrorCode::UpstreamFailed, format!("fetching {url}: {f:?}")))?;
    let text = String::from_utf8(body).map_err(|_| bad("the document is not UTF-8"))?;
    parse_document(&Value::String(text))
}

/// The first server URL of the document, if any.
pub(crate) fn server_url(doc: &Value) -> Option<String> {
    doc.pointer("/servers/0/url")
        .and_then(Value::as_str)
        .map(str::to_string)
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// Follows a local `$ref` (a few hops at most).
fn deref<'a>(doc: &'a Value, mut v: &'a Value) -> Result<&'a Value> {
    for _ in 0..8 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r
                    .strip_prefix('#')
                    .ok_or_else(|| bad(format!("only local references are supported, not '{r}'")))?;
                v = doc
                    .pointer(ptr)
                    .ok_or_else(|| bad(format!("reference '{r}' points nowhere")))?;
            }
            None => return Ok(v),
        }
    }
    Err(bad("a reference chain is too long or circular"))
}

fn tool_name(op: &Value, method: &str, path: &str) -> String {
    let raw = match op.get("operationId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("{method}{path}"),
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name = name.trim_matches('_').to_string();
    name.truncate(64);
    if name.is_empty() { method.to_string() } else { name }
}

/// Every operation of `doc` as a tool.
pub(crate) fn operations(doc: &Value, base_url: &str) -> Result<Vec<ToolDef>> {
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the document has no 'paths'"))?;
    let mut defs = Vec::new();
    let mut names = BTreeSet::new();
    for (path, item) in paths {
        let item = deref(doc, item)?;
        let shared: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let mut name = tool_name(op, method, path);
            let mut n = 2;
            while !names.insert(name.clone()) {
                name = format!("{}_{n}", tool_name(op, method, path));
                n += 1;
            }
            defs.push(operation(doc, path, method, op, &shared, name, base_url)?);
        }
    }
    Ok(defs)
}

fn operation(
    doc: &Value,
    path: &str,
    method: &str,
    op: &Value,
    shared: &[Value],
    name: String,
    base_url: &str,
) -> Result<ToolDef> {
    let mut props = Map::new();
    let mut required = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let own: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Operation parameters override path-level ones with the same name and place.
    for p in shared.iter().chain(own.iter()) {
        let p = deref(doc, p)?;
        let pname = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{method} {path}: a parameter has no name")))?;
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => In::Path,
            Some("query") => In::Query,
            Some("header") => In::Header,
            _ => continue, // cookies are not supported; such parameters are left out
        };
        let mut schema = p.get("schema").cloned().unwrap_or_else(|| json!({}));
        if let (Some(d), Some(obj)) = (p.get("description"), schema.as_object_mut()) {
            obj.entry("description").or_insert(d.clone());
        }
        params.retain(|q| !(q.name == pname && q.location == location));
        params.push(Param {
            name: pname.to_string(),
            location,
        });
        props.insert(pname.to_string(), schema);
        let req = location == In::Path || p.get("required").and_then(Value::as_bool) == Some(true);
        if req && !required.iter().any(|r: &Value| r == pname) {
            required.push(Value::String(pname.to_string()));
        }
    }
    let mut body = None;
    if let Some(rb) = op.get("requestBody") {
        let rb = deref(doc, rb)?;
        let content = rb.get("content").and_then(Value::as_object);
        let schema = content.and_then(|c| {
            c.iter()
                .find(|(ct, _)| ct.contains("json"))
                .map(|(_, m)| m.get("schema").cloned().unwrap_or_else(|| json!({})))
        });
        if let Some(schema) = schema {
            let key = if props.contains_key("body") {
                "request_body"
            } else {
                "body"
            };
            props.insert(key.to_string(), schema);
            if rb.get("required").and_then(Value::as_bool) == Some(true) {
                required.push(Value::String(key.to_string()));
            }
            body = Some(key.to_string());
        }
    }
    let mut schema = json!({
        "type": "object",
        "properties": Value::Object(props),
        "required": required,
        "additionalProperties": false,
    });
    let defs = referenced_schemas(doc, &schema)?;
    rewrite(&mut schema);
    if !defs.is_empty() {
        let mut defs = Value::Object(defs);
        rewrite(&mut defs);
        schema["$defs"] = defs;
    }
    let description = [op.get("summary"), op.get("description")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n\n");
    let binding = Operation {
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        params,
        body,
        base_url: base_url.to_string(),
    };
    Ok(ToolDef {
        upstream_name: name,
        description: if description.is_empty() {
            format!("{} {path}", method.to_ascii_uppercase())
        } else {
            description
        },
        input_schema: schema,
        output_schema: None,
        idempotent: matches!(method, "get" | "head" | "put" | "delete" | "options"),
        read_only: matches!(method, "get" | "head" | "options"),
        binding: serde_json::to_value(binding).map_err(Error::internal)?,
    })
}

const SCHEMA_REF: &str = "#/components/schemas/";

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref")
                && let Some(name) = r.strip_prefix(SCHEMA_REF)
            {
                out.push(name.to_string());
            }
            o.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The component schemas `schema` reaches, transitively.
fn referenced_schemas(doc: &Value, schema: &Value) -> Result<Map<String, Value>> {
    let mut todo = Vec::new();
    collect_refs(schema, &mut todo);
    let mut found = Map::new();
    while let Some(name) = todo.pop() {
        if found.contains_key(&name) {
            continue;
        }
        let s = doc
            .get("components")
            .and_then(|c| c.get("schemas"))
            .and_then(|s| s.get(&name))
            .ok_or_else(|| bad(format!("schema '{name}' is referenced but not defined")))?;
        collect_refs(s, &mut todo);
        found.insert(name, s.clone());
    }
    Ok(found)
}

/// Points component references at `$defs` and turns `nullable` into a null type.
fn rewrite(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref")
                && let Some(name) = r.strip_prefix(SCHEMA_REF)
            {
                *r = format!("#/$defs/{name}");
            }
            if o.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = o.get("type").cloned()
            {
                o.insert("type".into(), json!([t, "null"]));
            }
            o.values_mut().for_each(rewrite);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite),
        _ => {}
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Refuses arguments that would change which resource a call reaches: a path
/// parameter of `.` or `..` (a URL parser resolves it as a dot segment, even
/// percent-encoded).
pub(crate) fn check_arguments(op: &Operation, args: &Map<String, Value>) -> Result<()> {
    for p in op.params.iter().filter(|p| p.location == In::Path) {
        if let Some(v) = args.get(&p.name) {
            let s = scalar(v);
            if s == "." || s == ".." || s.is_empty() {
                return Err(Error::new(
                    ErrorCode::InvalidArguments,
                    format!(
                        "arguments/{}: a path parameter may not be empty, '.' or '..'",
                        p.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What one call needs besides its arguments.
pub(crate) struct Request<'a> {
    pub(crate) base_url: &'a str,
    pub(crate) headers: Vec<(String, Rendered)>,
    pub(crate) query: Vec<(String, Rendered)>,
    pub(crate) bearer: Option<crate::vault::SecretValue>,
    pub(crate) max_bytes: usize,
    pub(crate) timeout: Duration,
}

/// Calls `op` with `args`; the answer is an MCP-shaped tool result and its size.
pub(crate) async fn call(
    http: &reqwest::Client,
    op: &Operation,
    args: &Map<String, Value>,
    req: Request<'_>,
) -> Result<(Value, usize), Fault> {
    let mut path = op.path.clone();
    let mut query: Vec<(String, String)> = Vec::new();
    let mut headers = reqwest::header::HeaderMap::new();
    for p in &op.params {
        let Some(v) = args.get(&p.name) else { continue };
        match p.location {
            In::Path => path = path.replace(&format!("{{{}}}", p.name), &encode(&scalar(v))),
            In::Query => match v {
                Value::Array(items) => query.extend(items.iter().map(|i| (p.name.clone(), scalar(i)))),
                other => query.push((p.name.clone(), scalar(other))),
            },
            In::Header => {
                let name = reqwest::header::HeaderName::from_bytes(p.name.as_bytes()).map_err(|_| {
                    Fault::Malformed(format!("header parameter '{}' is not a valid name", p.name))
                })?;
                let value = reqwest::header::HeaderValue::from_str(&scalar(v)).map_err(|_| {
                    Fault::Malformed(format!("header parameter '{}' has an invalid value", p.name))
                })?;
                headers.insert(name, value);
            }
        }
    }
    for (k, v) in &req.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Fault::Unreachable(format!("header name '{k}' is invalid")))?;
        let mut value = reqwest::header::HeaderValue::from_str(v.expose())
            .map_err(|_| Fault::Unreachable(format!("header '{k}' has an invalid value")))?;
        value.set_sensitive(matches!(v, Rendered::Secret(_)));
        headers.insert(name, value);
    }
    if let Some(token) = &req.bearer {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Fault::Unreachable("the access token is not a valid header value".into()))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let url = format!("{}{}", req.base_url.trim_end_matches('/'), path);
    let method = reqwest::Method::from_bytes(op.method.as_bytes())
        .map_err(|_| Fault::Malformed(format!("method '{}' is invalid", op.method)))?;
    let mut builder = http.request(method, &url).headers(headers).query(&query);
    let secret_query: Vec<(&str, &str)> = req.query.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
    if !secret_query.is_empty() {
        builder = builder.query(&secret_query);
    }
    if let Some(b) = op.body.as_ref().and_then(|k| args.get(k)) {
        builder = builder.json(b);
    }
    let timeout = req.timeout;
    let resp = tokio::time::timeout(timeout, builder.send())
        .await
        .map_err(|_| Fault::Timeout)?
        // reqwest's error names the URL, which may carry a secret query value; the
        // caller scrubs every error detail.
        .map_err(|e| Fault::Unreachable(crate::http_error(e)))?;
    let status = resp.status().as_u16();
    let json_body = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let body = read_capped(resp, req.max_bytes, timeout).await?;
    if status == 429 || status >= 500 {
        return Err(Fault::Status(status));
    }
    let bytes = body.len();
    let text = String::from_utf8_lossy(&body).into_owned();
    let parsed = if json_body && !body.is_empty() {
        Some(
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| Fault::Malformed(format!("the body is declared JSON but is not: {e}")))?,
        )
    } else {
        None
    };
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": {"status": status, "body": parsed.unwrap_or(Value::Null)},
    });
    if status >= 400 {
        result["isError"] = Value::Bool(true);
    }
    Ok((result, bytes))
}

/// Reads a response body, refusing one longer than `max` bytes.
async fn read_capped(mut resp: reqwest::Response, max: usize, timeout: Duration) -> Result<Vec<u8>, Fault> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(Fault::TooLarge(max));
    }
    let read = async {
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Fault::Unreachable(e.without_url().to_string()))?
        {
            if out.len() + chunk.len() > max {
                return Err(Fault::TooLarge(max));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Fault::Timeout)?
}

/// Parses a stored binding.
pub(crate) fn binding(v: &Value) -> Result<Operation> {
    serde_json::from_value(v.clone()).map_err(|e| Error::internal(format!("stored OpenAPI binding: {e}")))
}

/// Literal values for a connection's headers or query, by name.
pub(crate) type Templates = BTreeMap<String, crate::reference::Template>;

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({
            "openapi": "3.0.3",
            "servers": [{"url": "http://127.0.0.1:1/api"}],
            "paths": {
                "/items/{id}": {
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                    "get": {"operationId": "getItem", "summary": "One item",
                            "parameters": [{"name": "verbose", "in": "query", "schema": {"type": "boolean"}}]},
                    "put": {"operationId": "putItem",
                            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}
                },
                "/search": {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}}
            },
            "components": {"schemas": {
                "Item": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "tag": {"$ref": "#/components/schemas/Tag"}}},
                "Tag": {"type": "string", "nullable": true},
                "Unused": {"type": "integer"}
            }}
        })
    }

    #[test]
    fn each_operation_becomes_a_tool_with_a_self_contained_schema() {
        let defs = operations(&doc(), "http://x").unwrap();
        let names: Vec<_> = defs.iter().map(|d| d.upstream_name.as_str()).collect();
        assert_eq!(names, vec!["getItem", "putItem", "post_search"]);
        let get = &defs[0];
        assert!(get.idempotent && get.read_only);
        assert_eq!(get.input_schema["required"], json!(["id"]));
        assert_eq!(get.input_schema["properties"]["verbose"]["type"], "boolean");
        let put = &defs[1];
        assert!(put.idempotent && !put.read_only, "PUT changes the item");
        assert_eq!(put.input_schema["required"], json!(["id", "body"]));
        assert_eq!(put.input_schema["properties"]["body"]["$ref"], "#/$defs/Item");
        assert_eq!(
            put.input_schema["$defs"]["Tag"]["type"],
            json!(["string", "null"])
        );
        assert!(put.input_schema["$defs"].get("Unused").is_none());
        assert!(!defs[2].idempotent && !defs[2].read_only);
        let v = jsonschema::validator_for(&put.input_schema).unwrap();
        assert!(v.is_valid(&json!({"id": 1, "body": {"name": "x", "tag": null}})));
        assert!(!v.is_valid(&json!({"id": 1, "body": {"tag": "t"}})));
        assert!(!v.is_valid(&json!({"id": 1, "body": {"name": "x"}, "extra": 1})));
    }

    #[test]
    fn documents_parse_from_yaml_and_old_versions_are_refused() {
        let y = "openapi: 3.1.0\npaths:\n  /a:\n    get:\n      operationId: a\n";
        let d = parse_document(&Value::String(y.into())).unwrap();
        assert_eq!(operations(&d, "http://x").unwrap().len(), 1);
        assert!(parse_document(&json!({"swagger": "2.0"})).is_err());
        assert!(parse_document(&json!("not: [valid")).is_err());
    }

    #[test]
    fn dot_segments_in_path_parameters_are_refused() {
        let op = Operation {
            method: "GET".into(),
            path: "/items/{id}".into(),
            params: vec![Param {
                name: "id".into(),
                location: In::Path,
            }],
            body: None,
            base_url: "http://x".into(),
        };
        for bad in ["..", ".", ""] {
            let args = json!({"id": bad});
            assert!(
                check_arguments(&op, args.as_object().unwrap()).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_arguments(&op, json!({"id": "a..b"}).as_object().unwrap()).is_ok());
    }

    #[test]
    fn path_values_are_percent_encoded() {
        assert_eq!(encode("a b/../c"), "a%20b%2F..%2Fc");
    }
}
