//! Curation, history, time, filters, isolation, bad input and handoffs, on both backends.

use serde_json::{Value, json};
use strata_core::ErrorCode;
use strata_memory::handoff::{HandoffStatus, ListHandoffs, NewHandoff};
use strata_memory::memory::{ListRequest, UpdateRequest};
use strata_memory::{Event, SearchRequest, Viewer};
use strata_store::Backend;

use crate::on_both_backends;
use crate::suite::harness::{Harness, T0, add_req, agent, remember};

fn search(v: Value) -> SearchRequest {
    serde_json::from_value(v).expect("a valid search request")
}

async fn add_new_fact_is_add_and_found_by_search(b: Backend) {
    let h = Harness::new(b).await;
    let r = remember(&h.memory, "u1", "I adopted a golden retriever named Biscuit.").await;
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].event, Event::Add);
    assert!(r.results[0].id.starts_with("mem_"));
    assert_eq!(
        r.results[0].memory,
        "User adopted a golden retriever named Biscuit."
    );
    let hits = h
        .memory
        .search(
            search(json!({"query": "what dog does the user have?", "filters": {"user_id": "u1"}})),
            &Viewer::All,
        )
        .await
        .unwrap()
        .results;
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.id, r.results[0].id);
    let parts = hit.score_parts.expect("search hits carry score parts");
    assert!(parts.lexical > 0.0 && hit.score.unwrap() > 0.0);
    assert_eq!(hit.valid_to, None);
    assert_eq!(hit.user_id.as_deref(), Some("u1"));
}

async fn adding_the_same_content_twice_is_none_and_records_each_source_once(b: Backend) {
    let h = Harness::new(b).await;
    let req = json!({"messages": [{"role": "user", "content": "I play the cello in an orchestra."}],
                     "user_id": "u1", "source": {"dia_id": "D1:3", "nested": {"k": [1, 2]}}});
    let first = h.memory.add(add_req(req.clone()), &Viewer::All).await.unwrap();
    let again = h.memory.add(add_req(req), &Viewer::All).await.unwrap();
    assert_eq!(first.results[0].event, Event::Add);
    assert_eq!(again.results[0].event, Event::None);
    assert_eq!(again.results[0].id, first.results[0].id);
    let other = h
        .memory
        .add(
            add_req(json!({"text": "I play the cello in an orchestra!", "user_id": "u1", "source": {"dia_id": "D9:1"}})),
            &Viewer::All,
        )
        .await
        .unwrap();
    assert_eq!(
        other.results[0].event,
        Event::None,
        "punctuation alone is no new fact"
    );
    let got = h.memory.get(&first.results[0].id, &Viewer::All).await.unwrap();
    assert_eq!(
        got.sources,
        vec![
            json!({"dia_id": "D1:3", "nested": {"k": [1, 2]}}),
            json!({"dia_id": "D9:1"})
        ],
        "sources are verbatim, each once, in arrival order"
    );
    let all = h.memory.list(ListRequest::default(), &Viewer::All).await.unwrap();
    assert_eq!(all.count, 1);
}

async fn concurrent_adds_of_one_fact_leave_one_memory(b: Backend) {
    let h = Harness::new(b).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let m = h.memory.clone();
        tasks.push(tokio::spawn(async move {
            m.add(
                add_req(
                    json!({"text": "I collect vintage typewriters.", "user_id": "u1", "source": {"n": i}}),
                ),
                &Viewer::All,
            )
            .await
            .unwrap()
        }));
    }
    let mut adds = 0;
    for t in tasks {
        let r = t.await.unwrap();
        adds += r.results.iter().filter(|c| c.event == Event::Add).count();
    }
    assert_eq!(adds, 1);
    let all = h.memory.list(ListRequest::default(), &Viewer::All).await.unwrap();
    assert_eq!(all.count, 1);
    assert_eq!(all.results[0].sources.len(), 8);
}

async fn a_conflicting_fact_updates_and_history_keeps_the_old_version(b: Backend) {
    let h = Harness::new(b).await;
    let first = remember(&h.memory, "u1", "I live in Oslo.")
        .await
        .results
        .remove(0);
    h.advance_days(10);
    let second = remember(&h.memory, "u1", "I live in Bergen now.")
        .await
        .results
        .remove(0);
    assert_eq!(second.event, Event::Update);
    assert_eq!(second.id, first.id);
    assert_eq!(second.previous_memory.as_deref(), Some("User lives in Oslo."));
    let got = h.memory.get(&first.id, &Viewer::All).await.unwrap();
    assert_eq!(got.memory, "User lives in Bergen now.");
    assert_eq!(got.version, 2);
    let hist = h.memory.history(&first.id, &Viewer::All).await.unwrap().results;
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[0].event, Event::Add);
    assert_eq!(hist[0].new_memory.as_deref(), Some("User lives in Oslo."));
    assert!(
        hist[0].valid_to.is_some(),
        "the old version was closed, not rewritten"
    );
    assert_eq!(hist[1].event, Event::Update);
    assert_eq!(hist[1].old_memory.as_deref(), Some("User lives in Oslo."));
    let hits = h
        .memory
        .search(
            search(json!({"query": "where does the user live Oslo", "user_id": "u1"})),
            &Viewer::All,
        )
        .await
        .unwrap()
        .results;
    assert_eq!(hits.len(), 1, "only the current version is searched");
    assert_eq!(hits[0].memory, "User lives in Bergen now.");
}

async fn a_retraction_deletes_but_history_keeps_every_version(b: Backend) {
    let h = Harness::new(b).await;
    let id = remember(&h.memory, "u1", "I work at Acme.").await.results[0]
        .id
        .clone();
    h.advance_days(1);
    let r = remember(&h.memory, "u1", "I no longer work at Acme.").await;
    assert_eq!(r.results[0].event, Event::Delete);
    assert_eq!(r.results[0].id, id);
    let e = h.memory.get(&id, &Viewer::All).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let hits = h
        .memory
        .search(search(json!({"query": "Acme", "user_id": "u1"})), &Viewer::All)
        .await
        .unwrap();
    assert!(hits.results.is_empty(), "a retired memory leaves search");
    let hist = h.memory.history(&id, &Viewer::All).await.unwrap().results;
    let events: Vec<Event> = hist.iter().map(|e| e.event).collect();
    assert_eq!(events, vec![Event::Add, Event::Delete]);
    assert_eq!(hist[1].old_memory.as_deref(), Some("User works at Acme."));
    // Deleting by id keeps history too, and deleting twice is not_found.
    let other = remember(&h.memory, "u1", "I paint watercolor landscapes.")
        .await
        .results[0]
        .id
        .clone();
    let d = h.memory.delete(&other, &Viewer::All).await.unwrap();
    assert_eq!(d.event, Event::Delete);
    assert_eq!(
        h.memory.delete(&other, &Viewer::All).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.memory
            .history(&other, &Viewer::All)
            .await
            .unwrap()
            .results
            .len(),
        2
    );
}

async fn as_of_searches_see_what_was_true_then(b: Backend) {
    let h = Harness::new(b).await;
    let march = "2023-03-01T00:00:00Z";
    let june = "2023-06-01T00:00:00Z";
    h.memory
        .add(
            add_req(
                json!({"text": "I live in Oslo.", "user_id": "u1", "observed_at": "2023-01-01T00:00:00Z"}),
            ),
            &Viewer::All,
        )
        .await
        .unwrap();
    h.memory
        .add(
            add_req(
                json!({"text": "I live in Lisbon.", "user_id": "u1", "observed_at": "2023-05-01T00:00:00Z"}),
            ),
            &Viewer::All,
        )
        .await
        .unwrap();
    let at =
        |when: &str| search(json!({"query": "where does the user live", "user_id": "u1", "as_of": when}));
    let then = h.memory.search(at(march), &Viewer::All).await.unwrap().results;
    assert_eq!(then.len(), 1);
    assert_eq!(then[0].memory, "User lives in Oslo.");
    assert_eq!(then[0].valid_to.as_deref(), Some("2023-05-01T00:00:00.000Z"));
    let later = h.memory.search(at(june), &Viewer::All).await.unwrap().results;
    assert_eq!(later[0].memory, "User lives in Lisbon.");
    let before = h
        .memory
        .search(at("2022-06-01T00:00:00Z"), &Viewer::All)
        .await
        .unwrap()
        .results;
    assert!(
        before.is_empty(),
        "nothing was known to be true before it was observed"
    );
}

async fn filters_select_by_scope_metadata_operators_and_logic(b: Backend) {
    let h = Harness::new(b).await;
    for (user, text, meta) in [
        (
            "u1",
            "I enjoy hiking in the mountains.",
            json!({"topic": "hobby", "rank": 1}),
        ),
        (
            "u1",
            "I enjoy baking sourdough bread.",
            json!({"topic": "food", "rank": 5}),
        ),
        (
            "u2",
            "I enjoy hiking along rivers.",
            json!({"topic": "hobby", "rank": 3}),
        ),
    ] {
        h.memory
            .add(
                add_req(json!({"text": text, "user_id": user, "metadata": meta})),
                &Viewer::All,
            )
            .await
            .unwrap();
    }
    let count = |f: Value| {
        let m = h.memory.clone();
        async move {
            let req: ListRequest = serde_json::from_value(json!({"filters": f})).unwrap();
            m.list(req, &Viewer::All).await.unwrap().count
        }
    };
    assert_eq!(count(json!({"user_id": "u1"})).await, 2);
    assert_eq!(count(json!({"metadata": {"topic": "hobby"}})).await, 2);
    assert_eq!(count(json!({"metadata.rank": {"gte": 3}})).await, 2);
    assert_eq!(
        count(json!({"metadata.rank": {"in": [1, 3]}, "user_id": {"ne": "u2"}})).await,
        1
    );
    assert_eq!(
        count(json!({"OR": [{"user_id": "u2"}, {"metadata.topic": "food"}]})).await,
        2
    );
    assert_eq!(count(json!({"NOT": {"user_id": "u1"}})).await, 1);
    assert_eq!(count(json!({"memory": {"contains": "SOURDOUGH"}})).await, 1);
    assert_eq!(
        count(json!({"created_at": {"gte": "2023-05-08", "lt": "2023-05-09"}})).await,
        3
    );
    let hits = h
        .memory
        .search(
            search(json!({"query": "hiking", "filters": {"AND": [{"metadata.topic": "hobby"}, {"user_id": "u2"}]}})),
            &Viewer::All,
        )
        .await
        .unwrap()
        .results;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].user_id.as_deref(), Some("u2"));
}

async fn an_agent_never_sees_another_agents_memories_without_a_grant(b: Backend) {
    let h = Harness::new(b).await;
    let a = agent("agt_a");
    let bee = agent("agt_b");
    let mine = h
        .memory
        .add(
            add_req(json!({"text": "The deploy password rotates on Fridays.", "user_id": "u1"})),
            &a,
        )
        .await
        .unwrap()
        .results
        .remove(0);
    let q = || search(json!({"query": "deploy password Fridays"}));
    assert_eq!(h.memory.search(q(), &a).await.unwrap().results.len(), 1);
    assert!(h.memory.search(q(), &bee).await.unwrap().results.is_empty());
    let spoof = search(json!({"query": "deploy password", "filters": {"agent_id": "agt_a"}}));
    assert!(
        h.memory.search(spoof, &bee).await.unwrap().results.is_empty(),
        "a filter cannot widen rights"
    );
    assert_eq!(
        h.memory.get(&mine.id, &bee).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.memory.history(&mine.id, &bee).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.memory.delete(&mine.id, &bee).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    let upd = UpdateRequest {
        text: Some("hijacked".into()),
        ..Default::default()
    };
    assert_eq!(
        h.memory.update(&mine.id, upd, &bee).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.memory.list(ListRequest::default(), &bee).await.unwrap().count,
        0
    );
    let forged = h
        .memory
        .add(
            add_req(json!({"text": "Agent A likes chaos.", "agent_id": "agt_a"})),
            &bee,
        )
        .await
        .unwrap_err();
    assert_eq!(
        forged.code,
        ErrorCode::Forbidden,
        "an agent cannot write into another's scope"
    );
    // A handoff the receiver accepts grants read access to exactly what it names.
    let hof = h
        .memory
        .handoff(
            "agt_a",
            NewHandoff {
                to: "agt_b".into(),
                summary: "Taking over deploys".into(),
                memory_ids: vec![mine.id.clone()],
                task_ids: vec!["tsk_1".into()],
                state: json!({"step": 3}),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        h.memory.search(q(), &bee).await.unwrap().results.is_empty(),
        "pending grants nothing"
    );
    h.memory
        .decide_handoff(&hof.id, "agt_b", true, None)
        .await
        .unwrap();
    assert_eq!(h.memory.search(q(), &bee).await.unwrap().results.len(), 1);
    assert_eq!(h.memory.get(&mine.id, &bee).await.unwrap().id, mine.id);
    // B cannot hand on what it was never given.
    let other = h
        .memory
        .add(
            add_req(json!({"text": "Agent A keeps a private diary.", "user_id": "u1"})),
            &a,
        )
        .await
        .unwrap()
        .results
        .remove(0);
    let steal = NewHandoff {
        to: "agt_c".into(),
        summary: "exfiltrate".into(),
        memory_ids: vec![other.id],
        ..Default::default()
    };
    assert_eq!(
        h.memory.handoff("agt_b", steal).await.unwrap_err().code,
        ErrorCode::NotFound
    );
}

async fn bad_input_is_a_typed_client_error(b: Backend) {
    let h = Harness::new(b).await;
    let m = &h.memory;
    let add_err = |v: Value| {
        let m = m.clone();
        async move { m.add(add_req(v), &Viewer::All).await.unwrap_err() }
    };
    let e = add_err(json!({"text": "   ", "user_id": "u1"})).await;
    assert_eq!((e.code, e.code.status()), (ErrorCode::InvalidRequest, 400));
    assert_eq!(
        add_err(json!({"text": "hello there friend"})).await.code,
        ErrorCode::InvalidRequest,
        "no scope"
    );
    let big = "word ".repeat(10_000);
    let e = add_err(json!({"text": big, "user_id": "u1"})).await;
    assert_eq!((e.code, e.code.status()), (ErrorCode::MemoryTooLarge, 413));
    assert_eq!(
        add_err(json!({"text": "x y z", "user_id": "u1", "observed_at": "last tuesday"}))
            .await
            .code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        add_err(json!({"text": "x y z", "user_id": "u1", "source": "D1:1"}))
            .await
            .code,
        ErrorCode::InvalidRequest
    );
    let s = |v: Value| {
        let m = m.clone();
        async move { m.search(search(v), &Viewer::All).await.unwrap_err() }
    };
    let e = s(json!({"query": "x", "filters": {"user_id": {"like": "u%"}}})).await;
    assert_eq!((e.code, e.code.status()), (ErrorCode::InvalidFilter, 400));
    assert!(e.detail.contains("like"));
    assert_eq!(
        s(json!({"query": "x", "top_k": 0})).await.code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        s(json!({"query": "x", "top_k": 101})).await.code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(s(json!({"query": "  "})).await.code, ErrorCode::InvalidRequest);
    assert_eq!(
        s(json!({"query": "x", "as_of": "soon"})).await.code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        m.get("mem_../../etc", &Viewer::All).await.unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        m.get("mem_01jd3c5v7m2k9w8x4y6z0a1b2c", &Viewer::All)
            .await
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    let unknown: Result<SearchRequest, _> = serde_json::from_value(json!({"query": "x", "topk": 3}));
    assert!(unknown.is_err(), "unknown request fields are rejected at parse");
}

async fn max_tokens_trims_results_to_the_budget(b: Backend) {
    let h = Harness::new(b).await;
    for t in [
        "I grow tomatoes in my garden every summer.",
        "I grow basil and mint in small pots on the balcony of the flat.",
        "I grow peppers.",
    ] {
        remember(&h.memory, "u1", t).await;
    }
    let all = h
        .memory
        .search(search(json!({"query": "grow", "user_id": "u1"})), &Viewer::All)
        .await
        .unwrap();
    assert_eq!(all.results.len(), 3);
    let cheap = h
        .memory
        .search(
            search(json!({"query": "grow", "user_id": "u1", "max_tokens": 12})),
            &Viewer::All,
        )
        .await
        .unwrap();
    let cost: usize = cheap
        .results
        .iter()
        .map(|r| strata_memory::term::token_cost(&r.memory))
        .sum();
    assert!(!cheap.results.is_empty() && cheap.results.len() < 3);
    assert!(cost <= 12, "{cost} tokens exceed the budget");
}

async fn updates_by_id_make_versions_and_keep_the_old_text(b: Backend) {
    let h = Harness::new(b).await;
    let id = remember(&h.memory, "u1", "I speak Portuguese fluently.")
        .await
        .results[0]
        .id
        .clone();
    h.advance_days(2);
    let c = h
        .memory
        .update(
            &id,
            UpdateRequest {
                text: Some("User speaks Portuguese and Spanish.".into()),
                metadata: Some(json!({"checked": true})),
                source: Some(json!({"msg": "m-7"})),
            },
            &Viewer::All,
        )
        .await
        .unwrap();
    assert_eq!(c.event, Event::Update);
    let got = h.memory.get(&id, &Viewer::All).await.unwrap();
    assert_eq!(got.memory, "User speaks Portuguese and Spanish.");
    assert_eq!(got.metadata, json!({"checked": true}));
    assert_eq!(got.sources, vec![json!({"msg": "m-7"})]);
    let hist = h.memory.history(&id, &Viewer::All).await.unwrap().results;
    assert_eq!(hist.len(), 2);
    assert_eq!(
        hist[1].old_memory.as_deref(),
        Some("User speaks Portuguese fluently.")
    );
    let empty = UpdateRequest::default();
    assert_eq!(
        h.memory.update(&id, empty, &Viewer::All).await.unwrap_err().code,
        ErrorCode::InvalidRequest
    );
}

async fn list_pages_by_cursor(b: Backend) {
    let h = Harness::new(b).await;
    for i in 0..5 {
        remember(&h.memory, "u1", &format!("I visited museum number {i} in Paris.")).await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = h
            .memory
            .list(
                ListRequest {
                    page_size: Some(2),
                    cursor: cursor.clone(),
                    ..Default::default()
                },
                &Viewer::All,
            )
            .await
            .unwrap();
        assert_eq!(page.count, 5);
        seen.extend(page.results.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 5);
}

async fn another_instance_sees_writes_and_a_restart_keeps_everything(b: Backend) {
    let h = Harness::new(b).await;
    let replica = h.reopen().await;
    remember(&replica, "u1", "I keep bees on the roof.").await;
    let hits = h
        .memory
        .search(
            search(json!({"query": "bees roof", "user_id": "u1"})),
            &Viewer::All,
        )
        .await
        .unwrap();
    assert_eq!(hits.results.len(), 1, "the index follows writes made elsewhere");
    let fresh = h.reopen().await;
    assert_eq!(fresh.indexed(), 1);
    let again = remember(&fresh, "u1", "I keep bees on the roof.").await;
    assert_eq!(again.results[0].event, Event::None);
}

async fn conversations_attribute_speakers_and_resolve_dates(b: Backend) {
    let h = Harness::new(b).await;
    let r = h
        .memory
        .add(
            add_req(json!({
                "messages": [
                    {"role": "user", "name": "Caroline", "content": "Hey Mel! I went to a LGBTQ support group yesterday."},
                    {"role": "assistant", "name": "Melanie", "content": "Wow! I painted a sunrise last year."}
                ],
                "run_id": "conv-1",
                "observed_at": "2023-05-08T13:56:00Z"
            })),
            &Viewer::All,
        )
        .await
        .unwrap();
    let texts: Vec<&str> = r.results.iter().map(|c| c.memory.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "Caroline went to a LGBTQ support group yesterday (7 May 2023).",
            "Melanie painted a sunrise last year (2022)."
        ]
    );
    let hits = h
        .memory
        .search(
            search(json!({"query": "When did Caroline go to the LGBTQ support group?", "run_id": "conv-1"})),
            &Viewer::All,
        )
        .await
        .unwrap()
        .results;
    assert!(hits[0].memory.contains("7 May 2023"));
    assert!(
        hits[0].score_parts.unwrap().graph > 0.0,
        "the query names linked entities"
    );
}

async fn handoffs_are_listed_decided_once_and_only_by_the_receiver(b: Backend) {
    let h = Harness::new(b).await;
    let a = agent("agt_a");
    h.memory
        .add(
            add_req(json!({"text": "The customer prefers email over phone calls.", "user_id": "cust"})),
            &a,
        )
        .await
        .unwrap();
    let hof = h
        .memory
        .handoff(
            "agt_a",
            NewHandoff {
                to: "agt_b".into(),
                summary: "Customer case, half done".into(),
                memory_query: Some(json!({"query": "customer prefers email", "top_k": 5})),
                task_ids: vec!["tsk_9".into()],
                state: json!({"cursor": "abc"}),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(hof.status, HandoffStatus::Pending);
    assert_eq!(
        hof.memory_ids.len(),
        1,
        "the query was resolved as the sender sees memories"
    );
    let inbox = h
        .memory
        .list_handoffs(ListHandoffs {
            to: Some("agt_b".into()),
            status: Some(HandoffStatus::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(inbox.results.len(), 1);
    assert_eq!(inbox.results[0].state, json!({"cursor": "abc"}));
    assert_eq!(
        h.memory
            .decide_handoff(&hof.id, "agt_a", true, None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.memory
            .decide_handoff(&hof.id, "agt_z", true, None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    let d = h
        .memory
        .decide_handoff(&hof.id, "agt_b", true, None)
        .await
        .unwrap();
    assert_eq!(d.handoff.status, HandoffStatus::Accepted);
    assert_eq!(d.task_ids, vec!["tsk_9".to_string()]);
    let again = h
        .memory
        .decide_handoff(&hof.id, "agt_b", false, Some("changed my mind".into()))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code, again.code.status()),
        (ErrorCode::HandoffDecided, 409)
    );
    let hof2 = h
        .memory
        .handoff(
            "agt_a",
            NewHandoff {
                to: "agt_b".into(),
                summary: "Another".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = h
        .memory
        .decide_handoff(&hof2.id, "agt_b", false, Some("busy".into()))
        .await
        .unwrap();
    assert_eq!(r.handoff.status, HandoffStatus::Rejected);
    assert!(r.task_ids.is_empty());
    assert_eq!(
        h.memory
            .get_handoff(&hof2.id, &agent("agt_c"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    let self_handoff = NewHandoff {
        to: "agt_a".into(),
        summary: "me".into(),
        ..Default::default()
    };
    assert_eq!(
        h.memory.handoff("agt_a", self_handoff).await.unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    let _ = T0;
}

on_both_backends!(
    add_new_fact_is_add_and_found_by_search,
    adding_the_same_content_twice_is_none_and_records_each_source_once,
    concurrent_adds_of_one_fact_leave_one_memory,
    a_conflicting_fact_updates_and_history_keeps_the_old_version,
    a_retraction_deletes_but_history_keeps_every_version,
    as_of_searches_see_what_was_true_then,
    filters_select_by_scope_metadata_operators_and_logic,
    an_agent_never_sees_another_agents_memories_without_a_grant,
    bad_input_is_a_typed_client_error,
    max_tokens_trims_results_to_the_budget,
    updates_by_id_make_versions_and_keep_the_old_text,
    list_pages_by_cursor,
    another_instance_sees_writes_and_a_restart_keeps_everything,
    conversations_attribute_speakers_and_resolve_dates,
    handoffs_are_listed_decided_once_and_only_by_the_receiver,
);
