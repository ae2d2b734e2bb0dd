//! Authorization: may this principal perform this syscall?
//!
//! The kernel asks a [`Policy`] for every call. [`ScopePolicy`], the default,
//! admits operators to everything and agents to the syscalls their token's scopes
//! name, never to admin-only ones. Finer rules that need the resource (an agent
//! may mint tokens only for itself) are the layer's, checked on execution.

use strata_core::{Access, Error, Principal, Spec};

/// Decides whether a call may proceed.
pub trait Policy: Send + Sync + 'static {
    /// `Ok` to proceed, or the `forbidden` error to return.
    fn authorize(&self, principal: &Principal, spec: &Spec) -> Result<(), Error>;
}

/// Scopes and access levels, with no further rules.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScopePolicy;

impl Policy for ScopePolicy {
    fn authorize(&self, principal: &Principal, spec: &Spec) -> Result<(), Error> {
        if spec.access == Access::Admin && !principal.is_admin() {
            return Err(Error::forbidden(format!("{} is for operators only", spec.name)));
        }
        if !principal.allows(spec.name) {
            return Err(Error::forbidden(format!(
                "the token's scopes do not include {}",
                spec.name
            )));
        }
        Ok(())
    }
}
