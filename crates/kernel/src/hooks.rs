//! Hooks the ledger will fill: budget checks before effects, metering after.

use strata_core::{Error, Principal, Spec};

/// Decides whether a principal may spend on a syscall. The ledger implements it.
pub trait BudgetHook: Send + Sync + 'static {
    /// `Ok` to proceed; an error (e.g. over budget) stops the call before any effect.
    fn check(&self, principal: &Principal, spec: &Spec) -> Result<(), Error>;
}

/// Records what a syscall used. The ledger prices it.
pub trait UsageMeter: Send + Sync + 'static {
    /// Called once per completed syscall with its wall time.
    fn record(&self, principal: &Principal, spec: &Spec, status: u16, micros: u64);

    /// Called once per sandbox run or exec with what it used (wall, CPU, peak
    /// memory), attributed to its agent and task.
    fn sandbox_usage(&self, principal: &Principal, usage: &strata_compute::Usage) {
        let _ = (principal, usage);
    }
}

/// No budgets: everything is allowed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBudget;

impl BudgetHook for NoBudget {
    fn check(&self, _: &Principal, _: &Spec) -> Result<(), Error> {
        Ok(())
    }
}

/// No metering.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMeter;

impl UsageMeter for NoMeter {
    fn record(&self, _: &Principal, _: &Spec, _: u16, _: u64) {}
}
