//! Printing results as JSON or as aligned tables.

use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    /// Aligned columns for humans.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Prints `rows` (objects) as a table of `columns`, or the whole value as JSON.
pub(crate) fn print_list(format: Format, value: &Value, columns: &[&str]) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        return;
    }
    let rows: Vec<&Value> = match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let padded: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        line(r);
    }
}

/// Prints one object as `key: value` lines, or as JSON.
pub(crate) fn print_object(format: Format, value: &Value) {
    match (format, value.as_object()) {
        (Format::Table, Some(obj)) => {
            let w = obj.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in obj {
                println!("{k:<w$}  {}", cell(Some(v)));
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| cell(Some(x)))
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(o)) if o.is_empty() => "-".into(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(Some(v))))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}
