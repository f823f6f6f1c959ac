//! `x0t fault list | add | clear`: the CLI side of fault injection (the daemon side is
//! [`x0_node::fault`]); talks to the daemon's `/v1/faults`.

use clap::{Args, Subcommand};
use x0_node::exit::{CmdResult, Exit};
use x0_node::fault::{FaultCreated, FaultList, FaultSpec};
use x0_node::text::{print_json, table};

use crate::ctl::{ApiArgs, client};

/// `x0t fault …`.
#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// List the faults in force.
    List(ApiArgs),
    /// Inject a fault (the daemon must have danger_fault_injection.enabled = true).
    #[command(subcommand)]
    Add(FaultAdd),
    /// Remove one fault, or every fault when no ID is given.
    Clear {
        /// The fault's ID (from `x0t fault list`).
        id: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Options every `x0t fault add` takes.
#[derive(Debug, Args)]
pub struct AddCommon {
    /// The neighbour's node ID (32 hex digits) [default: every neighbour].
    #[arg(long, value_name = "ID")]
    pub peer: Option<String>,
    /// Remove the fault after this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub duration_ms: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `x0t fault add KIND`.
#[derive(Debug, Subcommand)]
pub enum FaultAdd {
    /// Hold every datagram sent to the neighbour for MS milliseconds (± jitter).
    Delay {
        /// Added delay, milliseconds (0..=10000).
        #[arg(long, value_name = "MS")]
        ms: u64,
        /// Uniform jitter around the delay, milliseconds (at most --ms).
        #[arg(long, value_name = "MS", default_value_t = 0)]
        jitter_ms: u64,
        #[command(flatten)]
        common: AddCommon,
    },
    /// Drop each datagram sent to the neighbour with probability RATIO.
    Loss {
        /// Drop probability, 0..=1.
        #[arg(long)]
        ratio: f64,
        #[command(flatten)]
        common: AddCommon,
    },
    /// Drop the data frames this node relays for others (to --peer only, when given).
    Blackhole {
        #[command(flatten)]
        common: AddCommon,
    },
    /// Block sends to the neighbour for MS, allow them for MS, and so on, starting blocked.
    Flap {
        /// Half period, milliseconds (100..=600000).
        #[arg(long, value_name = "MS")]
        period_ms: u64,
        #[command(flatten)]
        common: AddCommon,
    },
}

impl FaultAdd {
    /// The API body and where to send it.
    fn into_spec(self) -> (FaultSpec, ApiArgs) {
        match self {
            Self::Delay {
                ms,
                jitter_ms,
                common,
            } => (
                FaultSpec::Delay {
                    peer: common.peer,
                    delay_ms: ms,
                    jitter_ms,
                    duration_ms: common.duration_ms,
                },
                common.api,
            ),
            Self::Loss { ratio, common } => (
                FaultSpec::Loss {
                    peer: common.peer,
                    ratio,
                    duration_ms: common.duration_ms,
                },
                common.api,
            ),
            Self::Blackhole { common } => (
                FaultSpec::Blackhole {
                    peer: common.peer,
                    duration_ms: common.duration_ms,
                },
                common.api,
            ),
            Self::Flap { period_ms, common } => (
                FaultSpec::Flap {
                    peer: common.peer,
                    period_ms,
                    duration_ms: common.duration_ms,
                },
                common.api,
            ),
        }
    }
}

/// One line's worth of a fault's parameters.
fn describe(f: &FaultSpec) -> (&'static str, Option<&str>, String, Option<u64>) {
    match f {
        FaultSpec::Delay {
            peer,
            delay_ms,
            jitter_ms,
            duration_ms,
        } => (
            "delay",
            peer.as_deref(),
            format!("{delay_ms} ms ± {jitter_ms} ms"),
            *duration_ms,
        ),
        FaultSpec::Loss {
            peer,
            ratio,
            duration_ms,
        } => (
            "loss",
            peer.as_deref(),
            format!("ratio {ratio}"),
            *duration_ms,
        ),
        FaultSpec::Blackhole { peer, duration_ms } => {
            ("blackhole", peer.as_deref(), "transit".into(), *duration_ms)
        }
        FaultSpec::Flap {
            peer,
            period_ms,
            duration_ms,
        } => (
            "flap",
            peer.as_deref(),
            format!("period {period_ms} ms"),
            *duration_ms,
        ),
    }
}

fn list_text(l: &FaultList) -> String {
    let mut out = format!(
        "fault injection: {}\n",
        if l.enabled {
            "ENABLED"
        } else {
            "disabled (danger_fault_injection.enabled = false)"
        }
    );
    if l.faults.is_empty() {
        out.push_str("no faults in force\n");
        return out;
    }
    let rows: Vec<Vec<String>> = l
        .faults
        .iter()
        .map(|e| {
            let (kind, peer, what, duration) = describe(&e.fault);
            vec![
                e.id.to_string(),
                kind.to_owned(),
                peer.unwrap_or("*").to_owned(),
                what,
                duration.map_or("-".into(), |d| format!("{d} ms")),
            ]
        })
        .collect();
    out.push_str(&table(&["ID", "KIND", "PEER", "WHAT", "DURATION"], &rows));
    out
}

/// Runs `x0t fault …` against a running daemon's API.
pub fn run(cmd: FaultCommand) -> CmdResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::failure(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        match cmd {
            FaultCommand::List(api) => {
                let client = client(&api)?;
                let list: FaultList = client.get("/v1/faults").await?;
                if api.json {
                    print_json(&list);
                } else {
                    print!("{}", list_text(&list));
                }
            }
            FaultCommand::Add(add) => {
                let (spec, api) = add.into_spec();
                let client = client(&api)?;
                let body = serde_json::to_vec(&spec).map_err(|e| Exit::failure(e.to_string()))?;
                let answer = client
                    .send(hyper::Method::POST, "/v1/faults", Some(body))
                    .await?;
                let created: FaultCreated = client.decode("/v1/faults", &answer)?;
                if api.json {
                    print_json(&created);
                } else {
                    println!("fault {} injected", created.id);
                }
            }
            FaultCommand::Clear { id, api } => {
                let client = client(&api)?;
                let path = id.map_or("/v1/faults".to_owned(), |id| format!("/v1/faults/{id}"));
                client.send(hyper::Method::DELETE, &path, None).await?;
                if api.json {
                    print_json(&serde_json::json!({ "cleared": id }));
                } else {
                    match id {
                        Some(id) => println!("fault {id} removed"),
                        None => println!("every fault removed"),
                    }
                }
            }
        }
        Ok(())
    })
}
