//! Prefixed, sortable identifiers.
//!
//! An id is a short type prefix, an underscore and a lowercase ULID:
//! `agt_01jd3c5v7m2k9w8x4y6z0a1b2c`. ULIDs sort by creation time, so ids double as
//! pagination cursors.

use std::fmt;
use std::sync::Mutex;

/// A prefixed identifier such as `agt_01jd…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

/// One generator per process, so ids made in the same millisecond still sort in
/// the order they were made.
static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

fn next_ulid() -> ulid::Ulid {
    let mut g = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    g.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

impl Id {
    /// A fresh id with `prefix` (without the underscore). Ids made by one process
    /// increase strictly.
    pub fn new(prefix: &str) -> Id {
        Id(format!(
            "{prefix}_{}",
            next_ulid().to_string().to_ascii_lowercase()
        ))
    }

    /// Parses `s` as an id with `prefix`, or says why not.
    pub fn parse(prefix: &str, s: &str) -> Result<Id, String> {
        let rest = s
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('_'))
            .ok_or_else(|| format!("'{s}' is not a {prefix}_… id"))?;
        if rest.len() != 26 || ulid::Ulid::from_string(rest).is_err() {
            return Err(format!("'{s}' is not a {prefix}_… id"));
        }
        Ok(Id(s.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_back_and_sort_by_creation() {
        let a = Id::new("agt");
        let b = Id::new("agt");
        assert!(a < b, "ids made in the same millisecond must still increase");
        assert_eq!(Id::parse("agt", a.as_str()).unwrap(), a);
        assert!(Id::parse("tok", a.as_str()).is_err());
        assert!(Id::parse("agt", "agt_../../etc").is_err());
    }
}
