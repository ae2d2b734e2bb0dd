//! Filters over memories: parsed once from JSON into a typed tree, then evaluated.
//!
//! The JSON form follows Mem0's:
//! - `{"user_id": "u1"}`: plain equality; several keys in one object all hold (AND).
//! - `{"created_at": {"gte": "2024-01-01", "lt": "2024-02-01"}}`: operators
//!   `eq ne in nin gt gte lt lte contains` (several in one object all hold).
//! - `{"AND": [f, …]}`, `{"OR": [f, …]}`, `{"NOT": f}` (or `{"NOT": [f, …]}`: none holds).
//! - `"*"` as a value: the field is set (to anything).
//!
//! Fields: the scope (`user_id`, `agent_id`, `run_id`), `id` (or `memory_id`),
//! `memory`, `created_at`, `updated_at`, `valid_from`, `valid_to` (times as RFC 3339
//! or epoch milliseconds), and metadata as `metadata.KEY` (dots walk into
//! objects) or `{"metadata": {"KEY": value}}`.
//!
//! Comparison: numbers numerically, strings as strings, times as instants; a
//! field that is missing or of another type never matches an operator except
//! `ne` and `nin` (which hold). `contains` means substring for strings (case
//! insensitive) and element for arrays.

use serde_json::Value;
use strata_core::{Error, ErrorCode, Result};

/// The deepest nesting of AND/OR/NOT accepted.
const MAX_DEPTH: usize = 16;
/// The most comparisons one filter may hold.
const MAX_NODES: usize = 256;

/// A field a filter can test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The memory's user.
    UserId,
    /// The memory's agent.
    AgentId,
    /// The memory's run.
    RunId,
    /// The memory's id.
    Id,
    /// The memory's text.
    Memory,
    /// When the memory was first recorded.
    CreatedAt,
    /// When its current version was recorded.
    UpdatedAt,
    /// When its version became true.
    ValidFrom,
    /// When its version stopped being true.
    ValidTo,
    /// A path into the metadata object.
    Metadata(Vec<String>),
}

impl Field {
    fn parse(name: &str) -> Result<Field> {
        Ok(match name {
            "user_id" => Field::UserId,
            "agent_id" => Field::AgentId,
            "run_id" => Field::RunId,
            "id" | "memory_id" => Field::Id,
            "memory" => Field::Memory,
            "created_at" => Field::CreatedAt,
            "updated_at" => Field::UpdatedAt,
            "valid_from" => Field::ValidFrom,
            "valid_to" => Field::ValidTo,
            other => match other.strip_prefix("metadata.") {
                Some(path) if !path.is_empty() && path.split('.').all(|p| !p.is_empty()) => {
                    Field::Metadata(path.split('.').map(str::to_string).collect())
                }
                _ => {
                    return Err(bad(format!(
                        "unknown field '{other}' (use user_id, agent_id, run_id, id, memory, created_at, \
                         updated_at, valid_from, valid_to or metadata.KEY)"
                    )));
                }
            },
        })
    }

    fn is_time(&self) -> bool {
        matches!(
            self,
            Field::CreatedAt | Field::UpdatedAt | Field::ValidFrom | Field::ValidTo
        )
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal (or missing).
    Ne,
    /// Equal to one of a list.
    In,
    /// Equal to none of a list (or missing).
    Nin,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Substring (strings, case-insensitive) or element (arrays).
    Contains,
    /// Set to anything (`"*"`).
    Exists,
}

impl Op {
    fn parse(name: &str) -> Result<Op> {
        Ok(match name {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "in" => Op::In,
            "nin" => Op::Nin,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "contains" | "icontains" => Op::Contains,
            other => {
                return Err(bad(format!(
                    "unknown operator '{other}' (use eq, ne, in, nin, gt, gte, lt, lte, contains)"
                )));
            }
        })
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Matches everything.
    All,
    /// Every branch holds.
    And(Vec<Filter>),
    /// Some branch holds.
    Or(Vec<Filter>),
    /// The branch does not hold.
    Not(Box<Filter>),
    /// A comparison of one field with a value.
    Cmp {
        /// The field tested.
        field: Field,
        /// How.
        op: Op,
        /// Against what (times already turned into epoch milliseconds).
        value: Value,
    },
}

fn bad(why: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidFilter, why.into())
}

/// The values a filter reads from one memory.
pub trait Subject {
    /// The value of `field`, if the memory has one (times as epoch milliseconds).
    fn field(&self, field: &Field) -> Option<Value>;

    /// The value of `field` when it is a string held as one (a fast path that
    /// spares building a JSON value); `None` means "ask [`Subject::field`]".
    fn text(&self, _field: &Field) -> Option<Option<&str>> {
        None
    }
}

impl Filter {
    /// Parses the JSON form; `null` matches everything.
    pub fn parse(json: &Value) -> Result<Filter> {
        let mut nodes = 0;
        if json.is_null() {
            return Ok(Filter::All);
        }
        parse_node(json, 0, &mut nodes, "filters")
    }

    /// Both `self` and `other`.
    pub fn and(self, other: Filter) -> Filter {
        match (self, other) {
            (Filter::All, f) | (f, Filter::All) => f,
            (Filter::And(mut a), f) => {
                a.push(f);
                Filter::And(a)
            }
            (a, b) => Filter::And(vec![a, b]),
        }
    }

    /// Whether `s` passes.
    pub fn matches(&self, s: &dyn Subject) -> bool {
        match self {
            Filter::All => true,
            Filter::And(fs) => fs.iter().all(|f| f.matches(s)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(s)),
            Filter::Not(f) => !f.matches(s),
            Filter::Cmp { field, op, value } => {
                if let (Some(actual), Op::Eq | Op::Ne | Op::Exists, Value::String(_) | Value::Null) =
                    (s.text(field), op, value)
                {
                    return match (op, actual) {
                        (Op::Exists, a) => a.is_some(),
                        (Op::Eq, Some(a)) => value.as_str() == Some(a),
                        (Op::Eq, None) => false,
                        (_, Some(a)) => value.as_str() != Some(a),
                        (_, None) => true,
                    };
                }
                compare(s.field(field).as_ref(), *op, value)
            }
        }
    }

    /// The values this filter requires a field to equal at the top level (for
    /// narrowing candidates by scope before evaluation).
    pub fn required_eq(&self, field: &Field) -> Option<&str> {
        match self {
            Filter::Cmp {
                field: f,
                op: Op::Eq,
                value: Value::String(v),
            } if f == field => Some(v),
            Filter::And(fs) => fs.iter().find_map(|f| f.required_eq(field)),
            _ => None,
        }
    }
}

fn parse_node(json: &Value, depth: usize, nodes: &mut usize, at: &str) -> Result<Filter> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("{at}: nested deeper than {MAX_DEPTH} levels")));
    }
    let obj = json
        .as_object()
        .ok_or_else(|| bad(format!("{at}: must be an object")))?;
    let mut all = Vec::new();
    for (key, value) in obj {
        let here = format!("{at}.{key}");
        match key.as_str() {
            "AND" | "OR" | "and" | "or" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| bad(format!("{here}: must be an array of filters")))?;
                let parts = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| parse_node(v, depth + 1, nodes, &format!("{here}[{i}]")))
                    .collect::<Result<Vec<_>>>()?;
                all.push(if key.eq_ignore_ascii_case("and") {
                    Filter::And(parts)
                } else {
                    Filter::Or(parts)
                });
            }
            "NOT" | "not" => {
                let inner = match value {
                    Value::Array(items) => Filter::Or(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, v)| parse_node(v, depth + 1, nodes, &format!("{here}[{i}]")))
                            .collect::<Result<Vec<_>>>()?,
                    ),
                    v => parse_node(v, depth + 1, nodes, &here)?,
                };
                all.push(Filter::Not(Box::new(inner)));
            }
            "metadata" => {
                let m = value
                    .as_object()
                    .ok_or_else(|| bad(format!("{here}: must be an object of metadata keys")))?;
                for (k, v) in m {
                    let field = Field::Metadata(k.split('.').map(str::to_string).collect());
                    all.extend(parse_field(field, v, nodes, &format!("{here}.{k}"))?);
                }
            }
            name => {
                let field = Field::parse(name).map_err(|e| bad(format!("{at}: {}", e.detail)))?;
                all.extend(parse_field(field, value, nodes, &here)?);
            }
        }
    }
    Ok(match all.len() {
        0 => Filter::All,
        1 => all.pop().unwrap_or(Filter::All),
        _ => Filter::And(all),
    })
}

fn parse_field(field: Field, value: &Value, nodes: &mut usize, at: &str) -> Result<Vec<Filter>> {
    let mut out = Vec::new();
    let mut push = |field: Field, op: Op, value: Value| -> Result<()> {
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(bad(format!("filters: more than {MAX_NODES} comparisons")));
        }
        let value = typed(&field, op, value, at)?;
        out.push(Filter::Cmp { field, op, value });
        Ok(())
    };
    match value {
        Value::Object(ops) if !ops.is_empty() && ops.keys().all(|k| Op::parse(k).is_ok()) => {
            for (name, v) in ops {
                push(field.clone(), Op::parse(name)?, v.clone())?;
            }
        }
        Value::Object(ops) => {
            let unknown = ops
                .keys()
                .find(|k| Op::parse(k).is_err())
                .cloned()
                .unwrap_or_default();
            if matches!(field, Field::Metadata(_)) && ops.keys().all(|k| Op::parse(k).is_err()) {
                // A nested object compared for equality as a whole.
                push(field, Op::Eq, value.clone())?;
            } else {
                return Err(bad(format!(
                    "{at}: unknown operator '{unknown}' (use eq, ne, in, nin, gt, gte, lt, lte, contains)"
                )));
            }
        }
        Value::String(s) if s == "*" => push(field, Op::Exists, Value::Null)?,
        v => push(field, Op::Eq, v.clone())?,
    }
    Ok(out)
}

/// Checks the value suits the operator and turns times into epoch milliseconds.
fn typed(field: &Field, op: Op, value: Value, at: &str) -> Result<Value> {
    let one = |v: Value| -> Result<Value> {
        if field.is_time() {
            time_value(&v).map(Value::from).ok_or_else(|| {
                bad(format!(
                    "{at}: '{v}' is not a time (RFC 3339, a date YYYY-MM-DD, or epoch ms)"
                ))
            })
        } else {
            Ok(v)
        }
    };
    match op {
        Op::In | Op::Nin => match value {
            Value::Array(items) => Ok(Value::Array(items.into_iter().map(one).collect::<Result<_>>()?)),
            _ => Err(bad(format!("{at}: 'in' and 'nin' take an array"))),
        },
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => match value {
            Value::Number(_) | Value::String(_) => one(value),
            _ => Err(bad(format!("{at}: ordering takes a number, a string or a time"))),
        },
        Op::Contains => match value {
            Value::Array(_) | Value::Object(_) => Err(bad(format!(
                "{at}: 'contains' takes a string, a number or a boolean"
            ))),
            v => Ok(v),
        },
        Op::Eq | Op::Ne => one(value),
        Op::Exists => Ok(value),
    }
}

/// A time given as epoch milliseconds, an RFC 3339 instant or a YYYY-MM-DD date.
pub fn time_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_time(s),
        _ => None,
    }
}

/// Parses an RFC 3339 instant or a YYYY-MM-DD date (midnight UTC) to epoch ms.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t = humantime::parse_rfc3339_weak(&full).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

fn compare(actual: Option<&Value>, op: Op, want: &Value) -> bool {
    let Some(actual) = actual.filter(|v| !v.is_null()) else {
        return matches!(op, Op::Ne | Op::Nin);
    };
    match op {
        Op::Exists => true,
        Op::Eq => equal(actual, want),
        Op::Ne => !equal(actual, want),
        Op::In => want
            .as_array()
            .is_some_and(|w| w.iter().any(|x| equal(actual, x))),
        Op::Nin => !want
            .as_array()
            .is_some_and(|w| w.iter().any(|x| equal(actual, x))),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let Some(ord) = order(actual, want) else {
                return false;
            };
            match op {
                Op::Gt => ord.is_gt(),
                Op::Gte => ord.is_ge(),
                Op::Lt => ord.is_lt(),
                _ => ord.is_le(),
            }
        }
        Op::Contains => match (actual, want) {
            (Value::String(a), Value::String(w)) => a.to_lowercase().contains(&w.to_lowercase()),
            (Value::Array(items), w) => items.iter().any(|x| equal(x, w)),
            _ => false,
        },
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct M(Value);
    impl Subject for M {
        fn field(&self, f: &Field) -> Option<Value> {
            match f {
                Field::UserId => self.0.get("user_id").cloned(),
                Field::CreatedAt => self.0.get("created_at").cloned(),
                Field::Metadata(path) => {
                    let mut v = self.0.get("metadata")?;
                    for p in path {
                        v = v.get(p)?;
                    }
                    Some(v.clone())
                }
                _ => None,
            }
        }
    }

    fn m() -> M {
        M(json!({"user_id": "u1", "created_at": 1_700_000_000_000_i64,
                 "metadata": {"topic": "food", "tags": ["a", "b"], "n": 3, "deep": {"x": "y"}}}))
    }

    fn holds(f: Value) -> bool {
        Filter::parse(&f).expect("valid filter").matches(&m())
    }

    #[test]
    fn equality_operators_and_logic_evaluate_like_mem0() {
        assert!(holds(json!({"user_id": "u1"})));
        assert!(!holds(json!({"user_id": "u2"})));
        assert!(holds(json!({"user_id": {"in": ["u0", "u1"]}})));
        assert!(holds(json!({"user_id": {"nin": ["u0"]}})));
        assert!(
            holds(json!({"agent_id": {"ne": "a1"}})),
            "a missing field is not equal"
        );
        assert!(!holds(json!({"agent_id": "*"})));
        assert!(holds(json!({"user_id": "*"})));
        assert!(holds(json!({"metadata.n": {"gte": 3, "lt": 4}})));
        assert!(!holds(json!({"metadata.n": {"gt": 3}})));
        assert!(holds(json!({"metadata": {"topic": "food"}})));
        assert!(holds(json!({"metadata.deep.x": "y"})));
        assert!(holds(json!({"metadata.tags": {"contains": "b"}})));
        assert!(holds(json!({"metadata.topic": {"contains": "OO"}})));
        assert!(holds(
            json!({"created_at": {"gte": "2023-11-14", "lt": "2023-11-15T00:00:00Z"}})
        ));
        assert!(holds(
            json!({"OR": [{"user_id": "x"}, {"metadata.topic": "food"}]})
        ));
        assert!(!holds(
            json!({"AND": [{"user_id": "u1"}, {"NOT": {"metadata.topic": "food"}}]})
        ));
        assert!(holds(json!({"NOT": [{"user_id": "x"}, {"user_id": "y"}]})));
        assert!(
            !holds(json!({"metadata.n": {"gt": "3"}})),
            "a type mismatch never orders"
        );
    }

    #[test]
    fn malformed_filters_are_invalid_filter_errors_naming_the_place() {
        for (f, needle) in [
            (json!({"user_id": {"like": "u%"}}), "unknown operator 'like'"),
            (json!({"colour": "red"}), "unknown field 'colour'"),
            (json!({"AND": {"user_id": "u1"}}), "must be an array"),
            (json!({"user_id": {"in": "u1"}}), "take an array"),
            (json!({"created_at": {"gt": "yesterday"}}), "not a time"),
            (json!([1, 2]), "must be an object"),
            (json!({"OR": [{"user_id": "u"}, 3]}), "filters.OR[1]"),
        ] {
            let e = Filter::parse(&f).expect_err("must be rejected");
            assert_eq!(e.code, ErrorCode::InvalidFilter);
            assert!(e.detail.contains(needle), "{} should mention {needle}", e.detail);
        }
        let mut deep = json!({"user_id": "u"});
        for _ in 0..40 {
            deep = json!({ "NOT": deep });
        }
        assert_eq!(Filter::parse(&deep).unwrap_err().code, ErrorCode::InvalidFilter);
    }
}
