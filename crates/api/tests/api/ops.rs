//! /healthz, /readyz, /metrics and /openapi.json.

use std::collections::BTreeSet;

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{App, Call};

#[tokio::test]
async fn healthz_is_ok_without_a_token() {
    let app = App::new().await;
    let r = app.send(Call::new(Method::GET, "/healthz")).await;
    r.expect(200);
    assert_eq!(r.content_type(), Some("application/json"));
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_is_ready_when_the_store_answers() {
    let app = App::new().await;
    let r = app.send(Call::new(Method::GET, "/readyz")).await;
    r.expect(200);
    assert_eq!(r.json(), json!({"status": "ready"}));
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test]
async fn metrics_count_calls_by_syscall_and_status() {
    let app = App::new().await;
    let a = app.agent("a").await;
    for _ in 0..3 {
        app.get("/v1/agents", &app.admin).await.expect(200);
    }
    app.get("/v1/audit", &a.token).await.expect(403);
    app.send(Call::new(Method::GET, "/v1/agents")).await.expect(401);

    let r = app.send(Call::new(Method::GET, "/metrics")).await;
    r.expect(200);
    assert!(
        r.content_type().is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.content_type()
    );
    let text = r.text();
    assert!(
        text.contains("# TYPE strata_syscall_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE strata_syscall_duration_seconds histogram"),
        "{text}"
    );
    let count = |syscall: &str, status: u16| {
        metric(
            &text,
            &format!("strata_syscall_requests_total{{syscall=\"{syscall}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(count("agent.create", 201), Some(1.0), "{text}");
    assert_eq!(count("agent.list", 200), Some(3.0), "{text}");
    assert_eq!(count("agent.list", 401), Some(1.0), "{text}");
    assert_eq!(count("audit.list", 403), Some(1.0), "{text}");
    assert_eq!(count("agent.get", 200), None, "never called: {text}");

    let bucket = |syscall: &str, le: &str| {
        metric(
            &text,
            &format!("strata_syscall_duration_seconds_bucket{{syscall=\"{syscall}\",le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("agent.list", "+Inf"), Some(4.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "strata_syscall_duration_seconds_count{syscall=\"agent.list\"}"
        ),
        Some(4.0)
    );
    // Buckets are cumulative.
    let mut last = 0.0;
    for le in ["0.0005", "0.001", "0.01", "0.1", "1", "2.5", "+Inf"] {
        let n = bucket("agent.list", le).unwrap_or_else(|| panic!("bucket le={le} missing: {text}"));
        assert!(n >= last, "bucket le={le} is {n} < {last}");
        last = n;
    }
    // Every syscall has a histogram, even when never called.
    for e in app.kernel.registry().entries() {
        assert_eq!(
            bucket(e.spec.name, "+Inf").map(|_| ()),
            Some(()),
            "{}",
            e.spec.name
        );
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

async fn openapi(app: &App) -> Value {
    let r = app.send(Call::new(Method::GET, "/openapi.json")).await;
    r.expect(200);
    r.json()
}

#[tokio::test]
async fn openapi_lists_every_syscall_at_its_path_and_method() {
    let app = App::new().await;
    let doc = openapi(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut ops = 0;
    for e in app.kernel.registry().entries() {
        let s = e.spec;
        // OpenAPI writes axum's `{*path}` (spanning segments) as `{path}`.
        let path = s.path.replace("{*", "{");
        let op = &doc["paths"][path.as_str()][s.method.as_lower()];
        assert_eq!(
            op["operationId"],
            s.name,
            "{} {}: {op}",
            s.method.as_lower(),
            s.path
        );
        assert!(
            op["responses"][s.status.to_string()].is_object(),
            "{}: no {} response",
            s.name,
            s.status
        );
        // Path parameters are declared as such.
        for seg in path.split('/') {
            if let Some(p) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                let params = op["parameters"].as_array().expect("parameters");
                assert!(
                    params
                        .iter()
                        .any(|x| x["name"] == p && x["in"] == "path" && x["required"] == true),
                    "{}: path parameter {p} missing",
                    s.name
                );
            }
        }
        ops += 1;
    }
    // And nothing else.
    let mut served = 0;
    let mut ids = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().expect("paths") {
        for (_, op) in item.as_object().expect("a path item") {
            served += 1;
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "duplicate operationId"
            );
        }
    }
    assert_eq!(served, ops);
}

#[tokio::test]
async fn openapi_problem_schema_lists_every_code() {
    let app = App::new().await;
    let doc = openapi(&app).await;
    let problem = &doc["components"]["schemas"]["Problem"];
    let codes: BTreeSet<&str> = problem["properties"]["code"]["enum"]
        .as_array()
        .expect("code enum")
        .iter()
        .map(|c| c.as_str().expect("a string"))
        .collect();
    let want: BTreeSet<&str> = strata_core::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, want);
    for f in ["type", "title", "status", "detail", "code"] {
        assert!(problem["required"].as_array().unwrap().contains(&json!(f)), "{f}");
    }
    assert_eq!(
        doc["components"]["responses"]["Problem"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
}

#[tokio::test]
async fn openapi_references_resolve() {
    let app = App::new().await;
    let doc = openapi(&app).await;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    let mut missing = Vec::new();
    for r in &refs {
        let ok = if let Some(name) = r.strip_prefix("#/components/schemas/") {
            doc["components"]["schemas"].get(name).is_some()
        } else if let Some(name) = r.strip_prefix("#/components/responses/") {
            doc["components"]["responses"].get(name).is_some()
        } else {
            false
        };
        if !ok {
            missing.push(r.clone());
        }
    }
    assert!(missing.is_empty(), "dangling or foreign $refs: {missing:?}");
}

#[tokio::test]
async fn openapi_component_names_are_not_shared_by_different_schemas() {
    // Definitions are hoisted from every syscall into one namespace; two different
    // schemas under one name would leave one syscall documented with the other's.
    let app = App::new().await;
    let mut seen: std::collections::BTreeMap<String, (Value, &str)> = Default::default();
    let mut clashes = Vec::new();
    for e in app.kernel.registry().entries() {
        for schema in [&e.request_schema, &e.response_schema] {
            let Some(defs) = schema.get("$defs").and_then(Value::as_object) else {
                continue;
            };
            for (name, def) in defs {
                match seen.get(name) {
                    Some((prev, by)) if prev != def => {
                        clashes.push(format!("{name}: {by} vs {}", e.spec.name));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(name.clone(), (def.clone(), e.spec.name));
                    }
                }
            }
        }
    }
    assert!(clashes.is_empty(), "{clashes:?}");
    let doc = openapi(&app).await;
    for name in seen.keys() {
        assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
    }
}

#[tokio::test]
async fn openapi_puts_get_parameters_in_the_query_and_post_fields_in_the_body() {
    let app = App::new().await;
    let doc = openapi(&app).await;
    let list = &doc["paths"]["/v1/agents"]["get"];
    let names: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["after", "limit"]);
    assert!(list.get("requestBody").is_none());
    let create = &doc["paths"]["/v1/agents"]["post"];
    let body = &create["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"]["name"].is_object(), "{body}");
    assert_eq!(body["required"], json!(["name"]));
    assert!(
        create["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
    );
    // The path parameter is not repeated in the body.
    let mint = &doc["paths"]["/v1/agents/{id}/tokens"]["post"];
    let body = &mint["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"].get("id").is_none(), "{body}");
    assert!(!body["required"].as_array().unwrap().contains(&json!("id")));
}
