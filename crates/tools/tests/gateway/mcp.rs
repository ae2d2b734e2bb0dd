//! MCP upstreams: the reference servers over stdio and streamable HTTP.

use serde_json::{Value, json};
use strata_core::ErrorCode;
use strata_store::Backend;
use strata_tools::{Caller, ListTools};

use super::harness::{Gateway, agent, everything, free_port, npm_server, wait_for_port};
use crate::on_both_backends;

fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn stdio_server_tools_are_namespaced_listed_and_called(b: Backend) {
    let g = Gateway::new(b).await;
    let info = g.connect(everything("everything", json!({}))).await;
    assert_eq!(info.kind, "mcp_stdio");
    assert!(info.tools >= 5, "{info:?}");
    let (id, me) = agent();
    g.grant(&id, "everything.*").await;
    let tools = g.tools.list_tools(&me, &ListTools::default());
    let echo = tools.iter().find(|t| t.name == "everything.echo").unwrap();
    assert_eq!(echo.input_schema["type"], "object");
    assert!(echo.input_schema["properties"].get("message").is_some());
    // The upstream's annotations: `echo` is read-only, `toggle-simulated-logging` is not.
    assert!(echo.read_only && echo.idempotent, "{echo:?}");
    let toggle = tools
        .iter()
        .find(|t| t.name == "everything.toggle-simulated-logging")
        .unwrap();
    assert!(!toggle.read_only && !toggle.idempotent, "{toggle:?}");
    let found = g.tools.list_tools(
        &me,
        &ListTools {
            query: Some("ECHO".into()),
            connection: None,
        },
    );
    assert_eq!(found[0].name, "everything.echo", "name matches come first");
    let out = g
        .call(&me, "everything.echo", json!({"message": "hello gateway"}))
        .await
        .unwrap();
    assert!(!out.is_error);
    assert!(text_of(&out.result).contains("hello gateway"), "{}", out.result);
    let sum = g
        .call(&me, "everything.get-sum", json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert!(text_of(&sum.result).contains('5'), "{}", sum.result);
    // A declared output schema is kept, and the structured content comes back as sent.
    let weather = tools
        .iter()
        .find(|t| t.name == "everything.get-structured-content")
        .unwrap();
    let output = weather
        .output_schema
        .as_ref()
        .expect("the upstream's outputSchema");
    assert!(output["properties"].get("temperature").is_some(), "{output}");
    assert!(echo.output_schema.is_none(), "echo declares none");
    let w = g
        .call(
            &me,
            "everything.get-structured-content",
            json!({"location": "Chicago"}),
        )
        .await
        .unwrap();
    assert!(
        w.result["structuredContent"]["temperature"].is_number(),
        "{}",
        w.result
    );
    // The catalog survives a restart of the gateway, and the upstream restarts on first use.
    let again = strata_tools::Tools::open(g.store.clone(), strata_tools::Config::new(g.key.clone()))
        .await
        .unwrap();
    again.reload().await.unwrap();
    let out = again
        .call(
            &Caller::Operator,
            serde_json::from_value(
                json!({"tool": "everything.echo", "arguments": {"message": "after restart"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(text_of(&out.result).contains("after restart"));
    again.shutdown().await;
    g.tools.shutdown().await;
}

async fn a_sync_on_demand_reports_no_change_for_an_unchanged_server(b: Backend) {
    let g = Gateway::new(b).await;
    let info = g.connect(everything("ev", json!({}))).await;
    let report = g.tools.sync_connection("ev").await.unwrap();
    assert!(
        report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.tools.len(), info.tools);
    g.tools.remove_connection("ev").await.unwrap();
    assert!(
        g.tools
            .list_tools(&Caller::Operator, &ListTools::default())
            .is_empty()
    );
    let e = g
        .call(&Caller::Operator, "ev.echo", json!({"message": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::NotFound);
}

async fn concurrent_calls_on_one_stdio_session_each_get_their_own_reply(b: Backend) {
    let g = Gateway::new(b).await;
    g.connect(everything("ev", json!({}))).await;
    let me = Caller::Operator;
    // Replies come back on one pipe in whatever order the upstream finishes;
    // each must reach the call that asked, while a re-sync (rmcp's own
    // request on the same pipes) runs among them.
    let calls = (0..24).map(|i| {
        let g = &g;
        let me = &me;
        async move {
            let message = format!("message {i} of 24");
            let out = g.call(me, "ev.echo", json!({"message": message})).await.unwrap();
            (message, text_of(&out.result))
        }
    });
    let (replies, report) = tokio::join!(futures::future::join_all(calls), g.tools.sync_connection("ev"));
    for (message, text) in replies {
        assert!(text.ends_with(&message), "asked for {message:?}, got {text:?}");
    }
    assert!(report.unwrap().changed.is_empty());
    g.tools.shutdown().await;
}

async fn filesystem_server_reads_only_inside_its_root(b: Backend) {
    let g = Gateway::new(b).await;
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("note.txt"), "a note for the gateway").unwrap();
    let (cmd, script) = npm_server("server-filesystem");
    let root_path = root.path().canonicalize().unwrap().display().to_string();
    g.connect(json!({"name": "fs", "upstream": {"kind": "mcp_stdio", "command": cmd, "args": [script, root_path.clone()]}}))
        .await;
    let (id, me) = agent();
    g.grant(&id, "fs.read_*").await;
    let names: Vec<String> = g
        .tools
        .list_tools(&me, &ListTools::default())
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"fs.read_text_file".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("fs.write")),
        "the grant covers reads only: {names:?}"
    );
    let out = g
        .call(
            &me,
            "fs.read_text_file",
            json!({"path": format!("{root_path}/note.txt")}),
        )
        .await
        .unwrap();
    assert!(
        text_of(&out.result).contains("a note for the gateway"),
        "{}",
        out.result
    );
    let outside = g
        .call(&me, "fs.read_text_file", json!({"path": "/etc/passwd"}))
        .await
        .unwrap();
    assert!(
        outside.is_error,
        "the upstream refuses paths outside its root: {}",
        outside.result
    );
    let e = g
        .call(
            &me,
            "fs.write_file",
            json!({"path": format!("{root_path}/x"), "content": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::Forbidden);
    assert!(!root.path().join("x").exists());
    g.tools.shutdown().await;
}

async fn streamable_http_server_tools_are_called(b: Backend) {
    let g = Gateway::new(b).await;
    let port = free_port();
    let (cmd, script) = npm_server("server-everything");
    let mut child = tokio::process::Command::new(cmd)
        .arg(script)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port).await;
    let info = g
        .connect(json!({"name": "remote", "upstream": {"kind": "mcp_http", "url": format!("http://127.0.0.1:{port}/mcp")}}))
        .await;
    assert_eq!(info.kind, "mcp_http");
    let out = g
        .call(&Caller::Operator, "remote.echo", json!({"message": "over http"}))
        .await
        .unwrap();
    assert!(text_of(&out.result).contains("over http"), "{}", out.result);
    g.tools.shutdown().await;
    child.kill().await.unwrap();
}

async fn an_upstream_that_cannot_start_is_refused_at_registration(b: Backend) {
    let g = Gateway::new(b).await;
    let e = g
        .tools
        .add_connection(
            serde_json::from_value(
                json!({"name": "nope", "upstream": {"kind": "mcp_stdio", "command": "/nonexistent/binary"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UpstreamFailed, "{e}");
    assert!(g.tools.list_connections().is_empty());
}

async fn a_tools_list_changed_notification_resyncs_the_catalog(b: Backend) {
    let g = Gateway::new(b).await;
    let spec = json!({"name": "h", "upstream": {"kind": "mcp_stdio", "command": "python3",
        "args": [super::harness::script("hostile_mcp.py")]}});
    g.connect(spec).await;
    assert!(g.tools.get_tool(&Caller::Operator, "h.extra").is_err());
    g.call(&Caller::Operator, "h.grow", json!({})).await.unwrap();
    for _ in 0..100 {
        if g.tools.get_tool(&Caller::Operator, "h.extra").is_ok() {
            let out = g.call(&Caller::Operator, "h.extra", json!({})).await.unwrap();
            assert!(!out.is_error);
            g.tools.shutdown().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the new tool never appeared in the catalog");
}

async fn a_connection_that_distrusts_hints_counts_only_its_own_lists(b: Backend) {
    let g = Gateway::new(b).await;
    let mut spec = everything("ev", json!({}));
    spec["trust_hints"] = json!(false);
    spec["read_only"] = json!(["get-sum"]);
    g.connect(spec).await;
    let tools = g.tools.list_tools(&Caller::Operator, &ListTools::default());
    let flags = |name: &str| {
        let t = tools.iter().find(|t| t.name == name).unwrap();
        (t.read_only, t.idempotent)
    };
    // The upstream marks both read-only; only the connection's list counts.
    assert_eq!(flags("ev.echo"), (false, false));
    assert_eq!(flags("ev.get-sum"), (true, true));
    assert!(!g.tools.is_read_only("ev.echo") && g.tools.is_read_only("ev.get-sum"));
}

on_both_backends!(
    a_connection_that_distrusts_hints_counts_only_its_own_lists,
    a_tools_list_changed_notification_resyncs_the_catalog,
    stdio_server_tools_are_namespaced_listed_and_called,
    a_sync_on_demand_reports_no_change_for_an_unchanged_server,
    concurrent_calls_on_one_stdio_session_each_get_their_own_reply,
    filesystem_server_reads_only_inside_its_root,
    streamable_http_server_tools_are_called,
    an_upstream_that_cannot_start_is_refused_at_registration,
);
