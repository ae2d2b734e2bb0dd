//! `audit.*`: reading and verifying the audit chain.

use strata_core::{Access, Effect, Method, Result, Spec, Syscall};
use strata_governance::{AuditEntry, Verification, audit};

use super::{NoParams, SeqPage, SeqParams};
use crate::{Action, Cx, Handler, Kernel};

/// `audit.list`
pub struct ListAudit;

impl Syscall for ListAudit {
    type Request = SeqParams;
    type Response = SeqPage<AuditEntry>;
    const SPEC: Spec = Spec {
        name: "audit.list",
        description: "Read the audit log in order: who did what, when, under which intent, with what outcome, chained by hash.",
        resource: "audit",
        effect: Effect::Read,
        access: Access::Admin,
        method: Method::Get,
        path: "/v1/audit",
        status: 200,
    };
}

impl Handler for ListAudit {
    async fn handle(k: &Kernel, _cx: &Cx, req: SeqParams) -> Result<Action<SeqPage<AuditEntry>>> {
        let (after, limit) = req.bounds();
        let items = audit::list(k.store(), after, limit).await?;
        Ok(Action::Done(SeqPage::new(items, limit, |e| e.seq)))
    }
}

/// `audit.verify`
pub struct VerifyAudit;

impl Syscall for VerifyAudit {
    type Request = NoParams;
    type Response = Verification;
    const SPEC: Spec = Spec {
        name: "audit.verify",
        description: "Recompute the whole audit hash chain and report the first entry that was altered, removed or reordered.",
        resource: "audit",
        effect: Effect::Read,
        access: Access::Admin,
        method: Method::Get,
        path: "/v1/audit/verify",
        status: 200,
    };
}

impl Handler for VerifyAudit {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Verification>> {
        Ok(Action::Done(audit::verify(k.store().pool()).await?))
    }
}
