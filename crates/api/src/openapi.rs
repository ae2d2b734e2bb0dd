//! The OpenAPI 3.1 document, derived from the syscall declarations.
//!
//! Each syscall becomes one operation: `operationId` is the syscall name, path
//! parameters come from the route, the rest of the request schema becomes the
//! query (GET, DELETE) or the JSON body (POST, PUT, PATCH). Schemas are the
//! declarations' own JSON Schemas (2020-12, which OpenAPI 3.1 uses), with their
//! `$defs` hoisted into `components/schemas`. Every error is a `Problem` whose
//! `code` is one of the documented codes.

use serde_json::{Map, Value, json};
use strata_core::{ErrorCode, Method};
use strata_kernel::Kernel;

use crate::route::path_params;

/// The OpenAPI document for `kernel`'s syscalls.
pub fn document(kernel: &Kernel) -> Value {
    let mut components = Map::new();
    let mut paths: Map<String, Value> = Map::new();
    for entry in kernel.registry().entries() {
        let spec = entry.spec;
        let params = path_params(spec.path);
        let request = hoist(&entry.request_schema, &mut components);
        let response = hoist(&entry.response_schema, &mut components);
        let props = request
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required: Vec<&str> = request
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut parameters: Vec<Value> = params
            .iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "operationId": spec.name,
            "summary": spec.name,
            "description": spec.description,
            "tags": [spec.resource],
            "x-strata-effect": format!("{:?}", spec.effect).to_lowercase(),
            "x-strata-access": format!("{:?}", spec.access).to_lowercase(),
            "responses": {
                spec.status.to_string(): {
                    "description": "Success",
                    "content": {"application/json": {"schema": response}}
                },
                "default": {"$ref": "#/components/responses/Problem"}
            }
        });
        let body_props: Map<String, Value> = props
            .into_iter()
            .filter(|(k, _)| !params.contains(&k.as_str()))
            .collect();
        match spec.method {
            Method::Get | Method::Delete => {
                for (name, schema) in &body_props {
                    parameters.push(json!({
                        "name": name, "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": schema,
                        "description": schema.get("description").cloned().unwrap_or(Value::Null),
                    }));
                }
            }
            Method::Post | Method::Put | Method::Patch => {
                let mut body = request.clone();
                if let Some(o) = body.as_object_mut() {
                    o.insert("properties".into(), Value::Object(body_props));
                    let req: Vec<&&str> = required.iter().filter(|r| !params.contains(r)).collect();
                    o.insert("required".into(), json!(req));
                }
                op["requestBody"] =
                    json!({"required": true, "content": {"application/json": {"schema": body}}});
            }
        }
        if spec.effect.mutates() {
            parameters.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "schema": {"type": "string", "maxLength": 255},
                "description": "Repeat a request safely: the same key and body return the stored response; a different body is refused with idempotency_key_reused."
            }));
        }
        op["parameters"] = Value::Array(parameters);
        // `{*path}` (a parameter spanning segments) is axum's; OpenAPI writes `{path}`.
        let item = paths
            .entry(spec.path.replace("{*", "{"))
            .or_insert_with(|| json!({}));
        item[spec.method.as_lower()] = op;
    }
    components.insert("Problem".into(), problem_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Strata",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "System calls for AI agents. Every operation is a syscall; its operationId is the syscall name."
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem; `code` is stable.",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    })
}

/// Moves a schema's `$defs` into `components` and points its references there.
fn hoist(schema: &Value, components: &mut Map<String, Value>) -> Value {
    let text = schema
        .to_string()
        .replace("\"#/$defs/", "\"#/components/schemas/");
    let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        if let Some(Value::Object(defs)) = obj.remove("$defs") {
            components.extend(defs);
        }
        obj.remove("$schema");
    }
    v
}

fn problem_schema() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let table: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| format!("| `{}` | {} | {} |", c.as_str(), c.status(), c.title()))
        .collect();
    json!({
        "type": "object",
        "description": format!("| code | status | meaning |\n|---|---|---|\n{}", table.join("\n")),
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": codes}
        }
    })
}
