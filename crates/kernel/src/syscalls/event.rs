//! `event.list`: the event log (served as SSE at the same path by the HTTP adapter).

use strata_core::{Access, Effect, Method, Result, Spec, Syscall};
use strata_store::event::Event;

use super::{SeqPage, SeqParams};
use crate::{Action, Cx, Handler, Kernel};

/// `event.list`
pub struct ListEvents;

impl Syscall for ListEvents {
    type Request = SeqParams;
    type Response = SeqPage<Event>;
    const SPEC: Spec = Spec {
        name: "event.list",
        description: "Read committed changes in order after a sequence number. With Accept: text/event-stream the same path streams them live.",
        resource: "event",
        effect: Effect::Read,
        access: Access::Admin,
        method: Method::Get,
        path: "/v1/events",
        status: 200,
    };
}

impl Handler for ListEvents {
    async fn handle(k: &Kernel, _cx: &Cx, req: SeqParams) -> Result<Action<SeqPage<Event>>> {
        let (after, limit) = req.bounds();
        let items = k.store().events_after(after, limit).await?;
        Ok(Action::Done(SeqPage::new(items, limit, |e| e.seq)))
    }
}
