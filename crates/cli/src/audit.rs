//! `strata audit …`: verifying the audit chain, offline or through a server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use sqlx::any::AnyPoolOptions;
use strata_governance::{Verification, audit};

use crate::Conn;
use crate::client::Client;
use crate::output::{print_list, print_object};

/// `strata audit …`
#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check the audit hash chain; exit 1 naming the first bad entry.
    ///
    /// Offline by default: reads the database of a (stopped or running) server
    /// directly, without changing it. With --online, asks the server instead.
    Verify {
        /// The server's data folder (its SQLite database is read).
        #[arg(long, env = "STRATA_DATA_DIR", default_value = "./strata-data")]
        data_dir: PathBuf,
        /// Read this PostgreSQL database instead (postgres://…).
        #[arg(long, env = "STRATA_DATABASE_URL")]
        database: Option<String>,
        /// Ask a running server (STRATA_URL) instead of reading the database.
        #[arg(long)]
        online: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List audit entries through a server.
    #[command(alias = "ls")]
    List {
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            data_dir,
            database,
            online,
            json,
        } => {
            let v: Verification = if online {
                let conn = Conn {
                    url: std::env::var("STRATA_URL").unwrap_or_else(|_| "http://127.0.0.1:7433".into()),
                    token: std::env::var("STRATA_TOKEN").ok(),
                    data_dir: data_dir.clone(),
                    output: crate::output::Format::Json,
                };
                let value = Client::from_conn(&conn)?.get("/v1/audit/verify").await?;
                serde_json::from_value(value).context("unexpected reply from /v1/audit/verify")?
            } else {
                verify_offline(&data_dir, database.as_deref()).await?
            };
            report(&v, json);
            Ok(if v.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::List { after, limit, conn } => {
            let v = Client::from_conn(&conn)?
                .get(&format!("/v1/audit?after={after}&limit={limit}"))
                .await?;
            print_list(
                conn.output,
                &v,
                &["seq", "at", "principal", "syscall", "resource", "outcome"],
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(v: &Verification, json: bool) {
    if json {
        print_object(
            crate::output::Format::Json,
            &serde_json::to_value(v).unwrap_or_default(),
        );
    } else if v.ok {
        println!("audit chain ok: {} entries verified", v.entries);
    } else {
        println!(
            "audit chain BROKEN at entry {}: {} ({} entries before it verified)",
            v.first_bad.unwrap_or(0),
            v.reason.as_deref().unwrap_or("unknown"),
            v.entries
        );
    }
}

/// Verifies the chain by reading the database directly, read-only.
async fn verify_offline(data_dir: &std::path::Path, database: Option<&str>) -> anyhow::Result<Verification> {
    sqlx::any::install_default_drivers();
    let url = match database {
        Some(u) => u.to_string(),
        None => {
            let file = data_dir.join("strata.db");
            if !file.exists() {
                bail!("no database at {} (is --data-dir right?)", file.display());
            }
            format!("sqlite://{}?mode=ro", file.display())
        }
    };
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .context("cannot open the database")?;
    let v = audit::verify(&pool).await.context("cannot read the audit log")?;
    pool.close().await;
    Ok(v)
}
