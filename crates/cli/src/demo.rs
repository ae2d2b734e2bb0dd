//! `strata demo`: a throwaway server, exercised end to end, narrated.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, Problem};
use crate::server::{ServeArgs, start};

/// Arguments of `strata demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the demo's data in this folder (default: a temporary folder, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The fleet manifest to run a job through (skipped when absent).
    #[arg(long, default_value = "examples/fleet/fleet.yaml")]
    fleet: PathBuf,
}

fn step(n: u32, what: &str) {
    println!("\n{n}. {what}");
}

fn show(label: &str, v: impl std::fmt::Display) {
    println!("   {label:<22} {v}");
}

fn refused(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Problem>() {
        Some(p) => format!("refused: {} {} — {}", p.status, p.code, p.detail),
        None => format!("failed: {e:#}"),
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let data_dir = args.data_dir.unwrap_or_else(|| temp.path().join("strata-data"));
    let serve = ServeArgs::local(data_dir.clone());
    let (running, server) = start(&serve).await?;
    let url = running.url();
    tokio::spawn(async move { server.await });
    println!("Strata demo: a server on {url}, data in {}", data_dir.display());
    let admin = Client::new(&url, &running.admin_token);

    step(1, "Register two agents with capability manifests (admin token)");
    let summarizer = admin
        .post(
            "/v1/agents",
            &json!({
                "name": "summarizer",
                "capabilities": [{
                    "name": "summarize", "version": "1", "description": "Summarize a text",
                    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                    "output_schema": {"type": "object", "properties": {"summary": {"type": "string"}}}
                }],
                "labels": {"team": "research"}
            }),
        )
        .await?;
    let reviewer = admin
        .post(
            "/v1/agents",
            &json!({"name": "reviewer", "capabilities": [{"name": "review"}]}),
        )
        .await?;
    let s_id = summarizer["id"].as_str().unwrap_or_default().to_string();
    let r_id = reviewer["id"].as_str().unwrap_or_default().to_string();
    show(
        "summarizer",
        format!("{s_id}  {}", summarizer["did"].as_str().unwrap_or_default()),
    );
    show(
        "reviewer",
        format!("{r_id}  {}", reviewer["did"].as_str().unwrap_or_default()),
    );
    let s_agent = admin.with_token(summarizer["token"].as_str().unwrap_or_default());
    let r_agent = admin.with_token(reviewer["token"].as_str().unwrap_or_default());

    step(2, "An agent reads the registry with its own token");
    let list = s_agent.get("/v1/agents").await?;
    show("agents visible", list["items"].as_array().map_or(0, Vec::len));
    let got = s_agent.get(&format!("/v1/agents/{r_id}")).await?;
    show(
        "reviewer offers",
        got["capabilities"][0]["name"].as_str().unwrap_or("-"),
    );

    step(3, "Policy: an agent may not delete another agent");
    let denied = s_agent.delete(&format!("/v1/agents/{r_id}")).await;
    show(
        "DELETE as summarizer",
        denied
            .map(|_| "allowed (unexpected)".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );

    step(
        4,
        "Scoped tokens: the summarizer mints itself a read-one-agent token",
    );
    let narrow = s_agent
        .post(
            &format!("/v1/agents/{s_id}/tokens"),
            &json!({"scopes": ["agent.get"], "expires_in": 600}),
        )
        .await?;
    show(
        "token",
        format!(
            "{} scopes={} expires {}",
            narrow["id"].as_str().unwrap_or_default(),
            narrow["scopes"],
            narrow["expires_at"].as_str().unwrap_or("-")
        ),
    );
    let narrow_client = admin.with_token(narrow["token"].as_str().unwrap_or_default());
    show(
        "agent.get with it",
        narrow_client
            .get(&format!("/v1/agents/{s_id}"))
            .await
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );
    show(
        "agent.list with it",
        narrow_client
            .get("/v1/agents")
            .await
            .map(|_| "allowed (unexpected)".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );

    step(
        5,
        "Idempotency: a retried create returns the first response, no second agent",
    );
    let body = json!({"name": "translator", "capabilities": [{"name": "translate"}]});
    let first = admin
        .send(
            Method::POST,
            "/v1/agents",
            Some(&body),
            Some("create-translator-1"),
        )
        .await?;
    let again = admin
        .send(
            Method::POST,
            "/v1/agents",
            Some(&body),
            Some("create-translator-1"),
        )
        .await?;
    show("first id", first["id"].as_str().unwrap_or_default());
    show(
        "retry id",
        format!(
            "{} (same: {})",
            again["id"].as_str().unwrap_or_default(),
            first["id"] == again["id"]
        ),
    );
    let other = json!({"name": "translator-2"});
    let reused = admin
        .send(
            Method::POST,
            "/v1/agents",
            Some(&other),
            Some("create-translator-1"),
        )
        .await;
    show(
        "same key, new body",
        reused
            .map(|_| "accepted (unexpected)".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );

    step(6, "Bad input gets a clear problem, never a 500");
    let bad = admin
        .post("/v1/agents", &json!({"name": "x", "capabilites": []}))
        .await;
    show(
        "misspelt field",
        bad.map(|_| "accepted (unexpected)".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );
    let bad = admin.post("/v1/agents", &json!({"name": 42})).await;
    show(
        "wrong type",
        bad.map(|_| "accepted (unexpected)".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );

    step(7, "Deleting an agent revokes its tokens at once");
    admin.delete(&format!("/v1/agents/{r_id}")).await?;
    show(
        "reviewer's token now",
        r_agent
            .get("/v1/agents")
            .await
            .map(|_| "works (unexpected)".to_string())
            .unwrap_or_else(|e| refused(&e)),
    );

    step(
        8,
        "Every change is in the hash-chained audit log and the event log",
    );
    let audit = admin.get("/v1/audit?limit=1000").await?;
    for e in audit["items"].as_array().into_iter().flatten() {
        println!(
            "   #{:<3} {:<20} {:<34} {:<30} {}",
            e["seq"],
            e["syscall"].as_str().unwrap_or(""),
            e["principal"].as_str().unwrap_or(""),
            e["resource"].as_str().unwrap_or(""),
            e["outcome"].as_str().unwrap_or("")
        );
    }
    let verify: Value = admin.get("/v1/audit/verify").await?;
    show("audit verify", verify);
    let events = admin.get("/v1/events?limit=1000").await?;
    show("events", events["items"].as_array().map_or(0, Vec::len));

    if args.fleet.exists() {
        step(
            9,
            "Managed agents: a planner, two workers and a reviewer run a job",
        );
        fleet_job(&admin, &args.fleet).await?;
    } else {
        println!(
            "\n9. (skipped: {} not found; run the demo from the repository)",
            args.fleet.display()
        );
    }
    running.kernel.stop_fleet().await;

    println!("\nDone. Run `strata serve` to keep a server, and `strata --help` for the rest.");
    running.kernel.store().close().await;
    Ok(ExitCode::SUCCESS)
}

/// Applies the example fleet, submits a job, waits for every part to settle and
/// narrates who did what.
async fn fleet_job(admin: &Client, manifest: &std::path::Path) -> anyhow::Result<()> {
    crate::fleet::apply_manifest(admin, manifest).await?;
    let input = json!({"parts": ["the quick brown fox", "a flaky part that fails once", "a poison part", "jumps over the lazy dog"]});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The planner registers when its process starts; until then `plan` is unroutable.
    let job = loop {
        match admin
            .post("/v1/tasks", &json!({"capability": "plan", "input": input}))
            .await
        {
            Ok(t) => break t,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            Err(e) => return Err(e),
        }
    };
    let job_id = job["id"].as_str().unwrap_or_default().to_string();
    show("job submitted", &job_id);
    let parts = loop {
        let plan = admin.get(&format!("/v1/tasks/{job_id}")).await?;
        let subtasks: Vec<String> = plan["result"]["subtasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut tasks = Vec::new();
        for id in &subtasks {
            tasks.push(admin.get(&format!("/v1/tasks/{id}")).await?);
        }
        let settled = !subtasks.is_empty() && tasks.iter().all(|t| t["state"] == "succeeded");
        if settled {
            break tasks;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the job did not finish within 60 s; see `strata logs` output above");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let agents = admin.get("/v1/agents?limit=500").await?;
    let name_of = |id: &Value| {
        agents["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["id"] == *id)
            .and_then(|a| a["name"].as_str())
            .unwrap_or("?")
            .to_string()
    };
    for t in &parts {
        let tries: Vec<String> = t["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                format!(
                    "{} {}",
                    name_of(&a["agent_id"]),
                    a["outcome"].as_str().unwrap_or("")
                )
            })
            .collect();
        show(
            &format!("part {}", t["input"]["part"]),
            format!(
                "{} → {}   [{}]",
                t["input"]["text"],
                t["result"],
                tries.join(", ")
            ),
        );
    }
    let escalations = admin.get("/v1/escalations").await?;
    for e in escalations["items"].as_array().into_iter().flatten() {
        show(
            "escalation",
            format!(
                "{} for {} → {} by {}",
                e["id"].as_str().unwrap_or(""),
                e["task_id"].as_str().unwrap_or(""),
                e["resolution"]["action"].as_str().unwrap_or("open"),
                e["resolution"]["by"]
                    .as_str()
                    .map(|b| name_of(&json!(b)))
                    .unwrap_or_default()
            ),
        );
    }
    let logs = admin.get("/v1/fleet/worker/logs?tail=20").await?;
    for l in logs["lines"].as_array().into_iter().flatten() {
        if l["stream"] == "stdout" {
            println!("   | {}", l["line"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}
