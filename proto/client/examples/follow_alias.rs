//! Reads an alias, then follows its changes as they happen.
//!
//! `cargo run -p capstan-client --example follow_alias -- URL ALIAS [EVENTS]`, with the
//! bearer token in `CAPSTAN_TOKEN` (none when the registry runs with `--auth disabled`).
//! Prints one line per event, and stops after EVENTS of them when given.

use capstan_client::{pb::registry::v1 as pb, registry_client};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(alias)) = (args.next(), args.next()) else {
        return Err("usage: follow_alias URL ALIAS [EVENTS]".into());
    };
    let limit: Option<usize> = args.next().map(|n| n.parse()).transpose()?;
    let token = std::env::var("CAPSTAN_TOKEN").ok();
    let mut registry = registry_client(&url, token.as_deref(), 8 << 20).await?;

    let now = registry
        .get_alias(pb::GetAliasRequest {
            alias: alias.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "{} -> run {} (revision {})",
        now.alias, now.run_id, now.revision
    );

    // The current value first (a SNAPSHOT event), then every change in revision order.
    let mut events = registry
        .watch_aliases(pb::WatchAliasesRequest {
            aliases: vec![alias],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut seen = 0;
    while let Some(event) = events.message().await? {
        let kind = event.r#type().as_str_name();
        let a = event.alias.unwrap_or_default();
        println!(
            "{kind} {} -> run {} (revision {})",
            a.alias, a.run_id, a.revision
        );
        seen += 1;
        if limit == Some(seen) {
            break;
        }
    }
    Ok(())
}
