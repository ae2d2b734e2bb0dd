//! Placeholders for statements built at run time with many parameters.
//!
//! SQLite finds a numbered parameter (`$7`) by walking the statement's list of
//! parameter names each time one is bound, so binding a statement of n numbered
//! parameters costs n²: most of the writer's time in a 32-row insert. A bare `?`
//! costs nothing to find. PostgreSQL takes only `$n`. [`Params`] writes the right
//! one for each, numbered in the order the values are bound.
//!
//! The rule for a statement built with it: every placeholder comes from the same
//! [`Params`], each stands for one value, and the values are bound in the order
//! the placeholders appear in the text (on SQLite a `?` takes the next value
//! bound). Never mix them with hand-written `$n` in one statement.

use crate::Conn;

use crate::Backend;

/// Hands out placeholders in bind order.
#[derive(Debug, Clone)]
pub struct Params {
    anonymous: bool,
    next: usize,
}

impl Params {
    /// Placeholders for a statement run on `backend`.
    pub fn new(backend: Backend) -> Params {
        Params {
            anonymous: backend == Backend::Sqlite,
            next: 0,
        }
    }

    /// Placeholders for a statement run on `conn`.
    pub fn on(conn: &Conn) -> Params {
        Params::new(conn.backend())
    }

    /// The placeholder of the next value bound.
    pub fn one(&mut self) -> String {
        self.next += 1;
        if self.anonymous {
            "?".to_string()
        } else {
            format!("${}", self.next)
        }
    }

    /// `n` placeholders separated by commas (for `IN (…)`).
    pub fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.one()).collect::<Vec<_>>().join(", ")
    }

    /// A parenthesised row of `n` placeholders (for `VALUES (…)`).
    pub fn row(&mut self, n: usize) -> String {
        format!("({})", self.list(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_numbers_in_order_and_sqlite_is_anonymous() {
        let mut pg = Params::new(Backend::Postgres);
        assert_eq!(pg.one(), "$1");
        assert_eq!(pg.row(2), "($2, $3)");
        assert_eq!(pg.list(2), "$4, $5");
        let mut lite = Params::new(Backend::Sqlite);
        assert_eq!(lite.one(), "?");
        assert_eq!(lite.row(2), "(?, ?)");
    }
}
