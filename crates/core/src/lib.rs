//! Strata's vocabulary, shared by every crate and free of I/O.
//!
//! - [`id`]: prefixed, sortable identifiers (`agt_…`, `tok_…`, `int_…`).
//! - [`error`]: the one table of problem codes and the [`Error`] every layer maps into.
//! - [`page`]: cursor paging.
//! - [`time`]: an injectable [`Clock`] and RFC 3339 formatting.
//! - [`secret`]: sealing small secrets (private keys, vault values) under a master key.
//! - [`syscall`]: the declaration of a syscall ([`Spec`]) and the [`Principal`] calling it.

pub mod error;
pub mod id;
pub mod page;
pub mod secret;
pub mod syscall;
pub mod time;

pub use error::{Error, ErrorCode, Result};
pub use id::Id;
pub use secret::MasterKey;
pub use syscall::{Access, Effect, Method, Principal, Spec, Syscall};
pub use time::{Clock, ManualClock, SystemClock};
