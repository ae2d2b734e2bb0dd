//! persistent
