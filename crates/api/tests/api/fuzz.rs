//! Property tests: whatever a client sends to any route, the server answers with
//! a status below 500, and every 4xx is an `application/problem+json` problem.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Method, Request};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};

use crate::harness::{self, App, Resp};

/// Cases per property (the JSON-bodies property shares them out by route).
const CASES: u32 = 512;

/// One route the app serves, from the registry.
#[derive(Debug, Clone)]
struct Route {
    name: &'static str,
    method: Method,
    path: &'static str,
    /// Property names anywhere in the request schema (including `$defs`).
    keys: Vec<String>,
    /// The request's JSON Schema.
    schema: Value,
}

fn keys_of(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                out.extend(props.keys().cloned());
            }
            m.values().for_each(|v| keys_of(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| keys_of(v, out)),
        _ => {}
    }
}

fn routes(app: &App) -> Vec<Route> {
    app.kernel
        .registry()
        .entries()
        .iter()
        .map(|e| {
            let mut keys = BTreeSet::new();
            keys_of(&e.request_schema, &mut keys);
            Route {
                name: e.spec.name,
                method: match e.spec.method {
                    strata_core::Method::Get => Method::GET,
                    strata_core::Method::Post => Method::POST,
                    strata_core::Method::Put => Method::PUT,
                    strata_core::Method::Patch => Method::PATCH,
                    strata_core::Method::Delete => Method::DELETE,
                },
                path: e.spec.path,
                keys: keys.into_iter().collect(),
                schema: e.request_schema.clone(),
            }
        })
        .collect()
}

/// The app under test with an operator token, two agent tokens and a few real
/// resources for `{id}` to name.
struct Fixture {
    rt: tokio::runtime::Runtime,
    app: App,
    /// Admin, an agent with `*`, an agent with `agent.get` and `token.create`.
    tokens: Vec<String>,
    routes: Vec<Route>,
    names: Vec<String>,
    /// Agents the fuzzer may delete, and the ids of their tokens.
    victims: Vec<String>,
    victim_tokens: Vec<String>,
    /// The agents whose tokens the fuzzer uses (never deleted or revoked).
    own: Vec<String>,
    /// How often each (syscall, status) was answered.
    seen: Mutex<BTreeMap<(String, u16), u32>>,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (app, tokens, own, victims, victim_tokens) = rt.block_on(async {
            let app = App::new().await;
            let wide = app.agent("fuzz-wide").await;
            let narrow = app
                .agent_scoped("fuzz-narrow", &["agent.get", "token.create"])
                .await;
            let mut victims = Vec::new();
            let mut victim_tokens = Vec::new();
            for i in 0..8 {
                let v = app.agent(&format!("victim-{i}")).await;
                victims.push(v.id);
                victim_tokens.push(v.token_id);
            }
            let tokens = vec![app.admin.clone(), wide.token, narrow.token];
            (app, tokens, vec![wide.id, narrow.id], victims, victim_tokens)
        });
        let routes = routes(&app);
        let mut names: Vec<String> = routes.iter().map(|r| r.name.to_string()).collect();
        names.extend(own.iter().cloned());
        Fixture {
            rt,
            app,
            tokens,
            routes,
            names,
            victims,
            victim_tokens,
            own,
            seen: Mutex::default(),
        }
    }

    /// Real ids `{id}` may take on `route`, chosen so that the fuzzer's own tokens
    /// stay valid.
    fn real_ids(&self, route: &Route) -> Vec<String> {
        match route.name {
            "agent.delete" => self.victims.clone(),
            "token.revoke" => self.victim_tokens.clone(),
            _ => self.victims.iter().chain(&self.own).cloned().collect(),
        }
    }

    /// An `{id}` for `route`: random, or naming something that exists.
    fn segment(&self, route: &Route) -> BoxedStrategy<String> {
        prop_oneof![1 => segment(), 1 => select(self.real_ids(route))].boxed()
    }

    /// Prints what was answered; returns how often each (syscall, status) was.
    fn report(&self, property: &str) -> BTreeMap<(String, u16), u32> {
        let seen = self.seen.lock().expect("not poisoned").clone();
        let total: u32 = seen.values().sum();
        eprintln!("{property}: {total} requests; (syscall, status) counts: {seen:?}");
        seen
    }

    fn runner() -> TestRunner {
        Fixture::runner_with(CASES)
    }

    fn runner_with(cases: u32) -> TestRunner {
        TestRunner::new(Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..Config::default()
        })
    }

    /// Sends `req` and checks the invariant.
    fn check(&self, route: &Route, req: Request<Body>) -> Result<(), TestCaseError> {
        let what = format!("{} {}", req.method(), req.uri());
        let r = self.rt.block_on(harness::send(&self.app.router, req));
        *self
            .seen
            .lock()
            .expect("not poisoned")
            .entry((route.name.to_string(), r.status.as_u16()))
            .or_default() += 1;
        check(&what, &r)
    }
}

fn check(what: &str, r: &Resp) -> Result<(), TestCaseError> {
    let status = r.status.as_u16();
    // The fuzzed app has no sandboxes: `sandbox.*` answer the documented 503.
    let no_sandboxes = status == 503 && r.text().contains("\"sandbox_unavailable\"");
    prop_assert!(status < 500 || no_sandboxes, "{what} -> {status}: {}", r.text());
    if (400..500).contains(&status) {
        prop_assert_eq!(
            r.content_type(),
            Some("application/problem+json"),
            "{} -> {}: {}",
            what,
            status,
            r.text()
        );
        let p: Value = serde_json::from_slice(&r.bytes)
            .map_err(|e| TestCaseError::fail(format!("{what}: problem is not JSON: {e}")))?;
        prop_assert_eq!(&p["status"], &Value::from(status), "{}: {}", what, p);
        let code = p["code"].as_str().unwrap_or_default();
        let known = strata_core::ErrorCode::parse(code);
        prop_assert!(
            known.is_some_and(|c| c.status() == status),
            "{what}: unknown code or wrong status: {p}"
        );
        prop_assert!(p["detail"].is_string() && p["title"].is_string(), "{what}: {p}");
    } else if (200..300).contains(&status) {
        prop_assert_eq!(r.content_type(), Some("application/json"), "{}", what);
        prop_assert!(serde_json::from_slice::<Value>(&r.bytes).is_ok(), "{what}");
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path segment for `{id}`: valid UTF-8 once decoded.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._~-]{1,30}",
        3 => ".{0,30}".prop_map(|s| encode(&s)),
        2 => "agt_[0-9a-z]{26}",
        2 => "tok_[0-9a-z]{26}",
        1 => "[a-z]{1000,4000}",
        1 => select(vec![
            "..", ".", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%00", "a%00b", "%2F", "%20", "%25",
            "%E2%82%AC", "%F0%9F%98%80", "%EF%BB%BF", "'%20OR%201=1--", "%3Cscript%3E",
        ])
        .prop_map(str::to_string),
        1 => "[0-9A-F]{2}".prop_map(|h| {
            // A single-byte escape decodes to valid UTF-8 only for ASCII.
            let b = u8::from_str_radix(&h, 16).unwrap_or(0) & 0x7f;
            format!("%{b:02X}")
        }),
    ]
}

/// Path segments that decode to invalid UTF-8.
fn invalid_utf8_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec!["%FF", "%C3%28", "%80", "%ED%A0%80", "a%FEb", "%F0%9F%98"]).prop_map(str::to_string),
        "[89A-F][0-9A-F]".prop_map(|h| format!("%{h}")),
    ]
}

fn uri_for(route: &Route, segment: &str, query: &str) -> String {
    let path: Vec<String> = route
        .path
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                segment.to_string()
            } else {
                s.to_string()
            }
        })
        .collect();
    let mut uri = path.join("/");
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(query);
    }
    uri
}

fn text(names: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9._-]{1,12}",
        3 => ".{0,24}",
        2 => select(names),
        1 => select(vec!["*", "agent.*", "token.*", "", " ", "null", "true", "0", "-1"]).prop_map(str::to_string),
        1 => "[a-z]{60,300}",
    ]
}

fn leaf(names: Vec<String>) -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => (0u64..400_000_000).prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        4 => text(names).prop_map(Value::String),
    ]
}

/// Arbitrary JSON whose object keys are often the schema's property names.
fn json_value(keys: Vec<String>, names: Vec<String>) -> impl Strategy<Value = Value> {
    let key = prop_oneof![3 => select(keys), 1 => ".{0,10}"];
    leaf(names).prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Generates values from a request's JSON Schema.
#[derive(Clone)]
struct FromSchema {
    /// The schema's `$defs`.
    defs: Value,
    /// Property names, for arbitrary objects.
    keys: Vec<String>,
    /// Syscall names and ids, for strings.
    names: Vec<String>,
}

impl FromSchema {
    /// Values of `schema`, mutated now and then into arbitrary JSON. `field` is the
    /// property the value is for, if any.
    fn value(&self, schema: &Value, field: Option<&str>) -> BoxedStrategy<Value> {
        prop_oneof![
            40 => self.conforming(schema, field),
            1 => json_value(self.keys.clone(), self.names.clone()),
        ]
        .boxed()
    }

    fn conforming(&self, schema: &Value, field: Option<&str>) -> BoxedStrategy<Value> {
        // Untyped schemas (`serde_json::Value` fields such as a capability's
        // `input_schema`) take any JSON; objects and booleans are the likely ones.
        let arbitrary = || {
            prop_oneof![
                2 => Just(Value::Object(Map::new())),
                1 => Just(serde_json::json!({"type": "object"})),
                1 => any::<bool>().prop_map(Value::Bool),
                2 => json_value(self.keys.clone(), self.names.clone()),
            ]
            .boxed()
        };
        let Value::Object(s) = schema else {
            return arbitrary();
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            return match self.defs.get(name) {
                Some(def) => self.value(def, field),
                None => arbitrary(),
            };
        }
        if let Some(Value::Array(alts)) = s.get("anyOf").or_else(|| s.get("oneOf")) {
            let alts: Vec<BoxedStrategy<Value>> = alts.iter().map(|a| self.value(a, field)).collect();
            return proptest::strategy::Union::new(alts).boxed();
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return arbitrary(),
        };
        let mut alts: Vec<BoxedStrategy<Value>> = Vec::new();
        for t in types {
            alts.push(match t {
                "null" => Just(Value::Null).boxed(),
                "boolean" => any::<bool>().prop_map(Value::Bool).boxed(),
                "integer" => prop_oneof![
                    3 => (0i64..1000).prop_map(Value::from),
                    2 => (0u64..400_000_000).prop_map(Value::from),
                    1 => any::<i64>().prop_map(Value::from),
                    1 => any::<u64>().prop_map(Value::from),
                ]
                .boxed(),
                "number" => any::<f64>().prop_map(Value::from).boxed(),
                // Scopes are syscall name patterns: mostly draw real ones.
                "string" if field == Some("scopes") => prop_oneof![
                    3 => select(self.scopes()),
                    1 => text(self.names.clone()),
                ]
                .prop_map(Value::String)
                .boxed(),
                "string" => text(self.names.clone()).prop_map(Value::String).boxed(),
                "array" => {
                    let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
                    prop::collection::vec(self.value(&items, field), 0..3)
                        .prop_map(Value::Array)
                        .boxed()
                }
                "object" => self.object(s),
                _ => arbitrary(),
            });
        }
        proptest::strategy::Union::new(alts).boxed()
    }

    fn scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = ["*", "agent.*", "token.*", "audit.*", "event.*"]
            .into_iter()
            .map(str::to_string)
            .collect();
        scopes.extend(self.names.iter().filter(|n| n.contains('.')).cloned());
        scopes
    }

    fn object(&self, s: &Map<String, Value>) -> BoxedStrategy<Value> {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
        if let Some(Value::Object(props)) = s.get("properties") {
            for (k, v) in props {
                let is_required = required.contains(&k.as_str());
                let value = self.value(v, Some(k));
                let k = k.clone();
                let pair = value.prop_map(move |v| (k.clone(), v));
                fields.push(if is_required {
                    prop::option::weighted(0.97, pair).boxed()
                } else {
                    prop::option::of(pair).boxed()
                });
            }
        }
        let extra: BoxedStrategy<Vec<(String, Value)>> = match s.get("additionalProperties") {
            Some(add @ Value::Object(_)) => {
                prop::collection::vec((text(self.names.clone()), self.value(add, None)), 0..4).boxed()
            }
            _ => Just(Vec::new()).boxed(),
        };
        (fields, extra)
            .prop_map(|(fields, extra)| {
                let mut m: Map<String, Value> = fields.into_iter().flatten().collect();
                m.extend(extra);
                Value::Object(m)
            })
            .boxed()
    }
}

/// A request body for `route` built from its schema, without its path parameters.
fn request_body(route: &Route, keys: &[String], names: &[String]) -> BoxedStrategy<Value> {
    let mut schema = route.schema.clone();
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        for seg in route.path.split('/') {
            if let Some(p) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                props.remove(p);
            }
        }
    }
    if let Some(Value::Array(req)) = schema.get_mut("required") {
        req.retain(|r| {
            !route
                .path
                .contains(&format!("{{{}}}", r.as_str().unwrap_or_default()))
        });
    }
    let g = FromSchema {
        defs,
        keys: keys.to_vec(),
        names: names.to_vec(),
    };
    g.value(&schema, None)
}

/// A top-level object keyed by `route`'s own property names.
fn schema_object(route: &Route, all_keys: Vec<String>, names: Vec<String>) -> BoxedStrategy<Value> {
    let own = if route.keys.is_empty() {
        vec!["name".to_string()]
    } else {
        route.keys.clone()
    };
    prop::collection::vec((select(own), json_value(all_keys, names)), 0..5)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
        .boxed()
}

fn idempotency_key() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        8 => Just(None),
        3 => "[!-~]{1,20}".prop_map(|s| Some(s.into_bytes())),
        1 => select(vec![&b""[..], b"a b", b"\t", b"\xff\xfe", "clé".as_bytes()]).prop_map(|b| Some(b.to_vec())),
        1 => "[a-z]{250,260}".prop_map(|s| Some(s.into_bytes())),
    ]
}

fn request(
    route: &Route,
    segment: &str,
    query: &str,
    token: &str,
    key: Option<&[u8]>,
    body: Option<(&str, Vec<u8>)>,
) -> Option<Request<Body>> {
    let mut b = Request::builder()
        .method(route.method.clone())
        .uri(uri_for(route, segment, query))
        .header("authorization", format!("Bearer {token}"));
    if let Some(k) = key {
        b = b.header("idempotency-key", axum::http::HeaderValue::from_bytes(k).ok()?);
    }
    let body = match body {
        Some((ct, bytes)) => {
            b = b.header("content-type", ct);
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    b.body(body).ok()
}

/// Which of the fixture's tokens to use: the operator's half the time.
fn token() -> impl Strategy<Value = usize> {
    prop_oneof![2 => Just(0), 1 => Just(1), 1 => Just(2)]
}

fn all_keys(f: &Fixture) -> Vec<String> {
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for r in &f.routes {
        keys.extend(r.keys.iter().cloned());
    }
    keys.into_iter().collect()
}

/// A fixed corpus of nasty inputs, sent to every route with every token, so that
/// every route sees them whatever the random draws of the properties below.
#[test]
fn fuzz_every_route_with_a_fixed_corpus() {
    let f = Fixture::new();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{}".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"\"x\"".to_vec()),
        ("application/json", b"{\"id\": \"x\"}".to_vec()),
        ("application/json", b"{\"name\": \"corpus\"}".to_vec()),
        ("application/json", b"{\"name\": {}}".to_vec()),
        (
            "application/json",
            b"{\"scopes\": null, \"expires_in\": 1e400}".to_vec(),
        ),
        ("application/json", b"{\"limit\": -1, \"after\": []}".to_vec()),
        ("application/json", "[".repeat(10_000).into_bytes()),
        ("application/json", b"\xff\xfe\x00".to_vec()),
        ("application/json", vec![b' '; 100]),
        ("text/plain", b"{}".to_vec()),
        ("application/json; charset=latin1", b"{}".to_vec()),
    ];
    let queries = [
        "",
        "limit=0",
        "limit=-1",
        "limit=18446744073709551616",
        "after=-9223372036854775808",
        "after=9223372036854775807",
        "after=%00",
        "after=%FF",
        "%FF=1",
        "limit=1&limit=2",
        "id=x",
        "a",
        "=",
        "&&&",
        "limit=1e3",
        "limit=NaN",
    ];
    let segments = ["x", "..", "%00", "%E2%82%AC", &"a".repeat(4000)];
    for route in &f.routes {
        for token in &f.tokens {
            for seg in segments {
                for (ct, bytes) in &bodies {
                    let body = Some((*ct, bytes.clone()));
                    let req = request(route, seg, "", token, None, body).expect("a valid request");
                    f.check(route, req)
                        .unwrap_or_else(|e| panic!("{}: {e}", route.name));
                }
                for q in queries {
                    let req = request(route, seg, q, token, None, None).expect("a valid request");
                    f.check(route, req)
                        .unwrap_or_else(|e| panic!("{}: {e}", route.name));
                }
            }
        }
    }
    f.report("corpus");
}

#[test]
fn fuzz_json_bodies_never_cause_server_errors() {
    let f = Fixture::new();
    let keys = all_keys(&f);
    // Each route gets its share of the cases (at least 8), so every route is
    // reached however many there are, rather than by luck of the draw.
    let per_route = (CASES / f.routes.len() as u32).max(8);
    for r in &f.routes {
        let body = prop_oneof![
            1 => json_value(keys.clone(), f.names.clone()),
            1 => schema_object(r, keys.clone(), f.names.clone()),
            4 => request_body(r, &keys, &f.names),
        ];
        let strategy = (f.segment(r), token(), idempotency_key(), body);
        Fixture::runner_with(per_route)
            .run(&strategy, |(seg, token, key, body)| {
                let bytes = body.to_string().into_bytes();
                let body = Some(("application/json", bytes));
                match request(r, &seg, "", &f.tokens[token], key.as_deref(), body) {
                    Some(req) => f.check(r, req),
                    None => Err(TestCaseError::fail("the generated request is not valid HTTP")),
                }
            })
            .unwrap_or_else(|e| panic!("{}: {e}", r.name));
    }
    let seen = f.report("json bodies");
    // Every route answered, and the generator gets past validation: some
    // writes other than the trivially valid token.create_admin succeed.
    for r in &f.routes {
        assert!(
            count(&seen, &[r.name], 100..600) > 0,
            "{} never called: {seen:?}",
            r.name
        );
    }
    let writes = ["agent.create", "agent.delete", "token.create", "token.revoke"];
    assert!(
        count(&seen, &writes, 200..300) > 0,
        "no write succeeded: {seen:?}"
    );
    assert!(
        count(&seen, &writes, 400..500) > 0,
        "no write was refused: {seen:?}"
    );
}

/// How many answers to any of `syscalls` had a status in `statuses`.
fn count(seen: &BTreeMap<(String, u16), u32>, syscalls: &[&str], statuses: std::ops::Range<u16>) -> u32 {
    seen.iter()
        .filter(|((name, status), _)| syscalls.contains(&name.as_str()) && statuses.contains(status))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn fuzz_raw_bytes_never_cause_server_errors() {
    let f = Fixture::new();
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Almost JSON: printable soup with structure characters.
        "[{}\\[\\]\":,0-9a-z .eE+-]{0,200}".prop_map(String::into_bytes),
    ];
    let strategy = (0..f.routes.len(), token(), bytes).prop_flat_map(|(route, token, bytes)| {
        (Just(route), f.segment(&f.routes[route]), Just(token), Just(bytes))
    });
    Fixture::runner()
        .run(&strategy, |(route, seg, token, bytes)| {
            let r = &f.routes[route];
            let body = Some(("application/json", bytes));
            match request(r, &seg, "", &f.tokens[token], None, body) {
                Some(req) => f.check(r, req),
                None => Err(TestCaseError::fail("the generated request is not valid HTTP")),
            }
        })
        .unwrap();
    f.report("raw bytes");
}

/// A query string for `route`: mostly its own parameters with plausible values.
fn query(route: &Route) -> BoxedStrategy<String> {
    let mut own: Vec<String> = route
        .schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    if own.is_empty() {
        own.push("limit".into());
    }
    let key = prop_oneof![
        6 => select(own),
        1 => select(vec!["limit", "after", "id", "name", "scopes"]).prop_map(str::to_string),
        1 => ".{0,8}".prop_map(|s| encode(&s)),
    ];
    let value = prop_oneof![
        4 => (0u32..2000).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|n| n.to_string()),
        2 => "agt_[0-9a-z]{26}",
        2 => ".{0,20}".prop_map(|s| encode(&s)),
        1 => select(vec!["", "true", "false", "%00", "+", "%2B", "1%202", "0x10", "1_000"]).prop_map(str::to_string),
    ];
    prop_oneof![
        4 => prop::collection::vec((key, value), 0..3).prop_map(|kv| {
            kv.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
        }),
        // Raw soup of characters allowed in a query.
        1 => "[a-zA-Z0-9=&+._~!$'()*,;:@/?%-]{0,60}",
    ]
    .boxed()
}

#[test]
fn fuzz_query_strings_never_cause_server_errors() {
    let f = Fixture::new();
    let reads: Vec<usize> = (0..f.routes.len())
        .filter(|&i| matches!(f.routes[i].method, Method::GET | Method::DELETE))
        .collect();
    assert!(reads.len() >= 5, "GET and DELETE routes: {reads:?}");
    let strategy = (select(reads), token()).prop_flat_map(|(route, token)| {
        let r = &f.routes[route];
        (Just(route), f.segment(r), Just(token), query(r))
    });
    Fixture::runner()
        .run(&strategy, |(route, seg, token, q)| {
            let r = &f.routes[route];
            match request(r, &seg, &q, &f.tokens[token], None, None) {
                Some(req) => f.check(r, req),
                None => Err(TestCaseError::fail("the generated request is not valid HTTP")),
            }
        })
        .unwrap();
    let seen = f.report("query strings");
    let lists = ["agent.list", "audit.list", "event.list"];
    assert!(count(&seen, &lists, 200..201) > 0, "no list succeeded: {seen:?}");
    assert!(
        count(&seen, &lists, 400..401) > 0,
        "no query was refused: {seen:?}"
    );
}

#[test]
fn fuzz_path_ids_with_invalid_utf8_are_problems() {
    let f = Fixture::new();
    let with_ids: Vec<usize> = (0..f.routes.len())
        .filter(|&i| f.routes[i].path.contains('{'))
        .collect();
    let strategy = (select(with_ids), invalid_utf8_segment(), 0..f.tokens.len());
    Fixture::runner()
        .run(&strategy, |(route, seg, token)| {
            let r = &f.routes[route];
            let body = (r.method == Method::POST).then(|| ("application/json", b"{}".to_vec()));
            match request(r, &seg, "", &f.tokens[token], None, body) {
                Some(req) => f.check(r, req),
                None => Err(TestCaseError::fail("the generated request is not valid HTTP")),
            }
        })
        .unwrap();
    f.report("property");
}
