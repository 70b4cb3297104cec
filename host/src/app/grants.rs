//! What a component's manifest entry grants it, on top of what the command
//! line gives every component: its environment, variables, outbound hosts,
//! stores and files, as its sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::manifest::AppComponent;
use super::templates;
use crate::guest::state::Sandbox;
use crate::imports::allowed::Destination;
use crate::imports::variables::Variables;

/// A component's sandbox: the server's, with what its manifest entry adds.
pub fn sandbox(
    component: &AppComponent,
    base: &Sandbox,
    values: &BTreeMap<String, String>,
    files: &[(PathBuf, String)],
) -> Result<Sandbox, String> {
    let mut sandbox = base.clone();
    let mut env = base.env.to_vec();
    env.extend(component.environment.iter().cloned());
    sandbox.env = env.into();
    let variables: Variables = component
        .variables
        .iter()
        .map(|(name, template)| {
            templates::render(template, values).map(|value| (name.clone(), value))
        })
        .collect::<Result<_, _>>()?;
    sandbox.config = Arc::new(variables);
    let mut allowed = base.allowed_outbound.to_vec();
    for host in &component.allowed_outbound_hosts {
        allowed.push(outbound(host, values)?);
    }
    sandbox.allowed_outbound = allowed.into();
    sandbox.stores_allowed = Some(component.key_value_stores.clone().into());
    sandbox.files = files.into();
    Ok(sandbox)
}

/// A Spin `allowed_outbound_hosts` entry (`https://api.example.com`,
/// `http://*.example.com:8000..8100`, `http://NAME.spin.internal`, `http://self`,
/// `{{ var }}` templates) as a destination our outbound policy allows.
fn outbound(entry: &str, values: &BTreeMap<String, String>) -> Result<Destination, String> {
    let entry = templates::render(entry, values)?;
    if !entry.contains("://") {
        return Err(format!(
            "`{entry}`: an outbound host is `SCHEME://HOST[:PORT]`, with `*` wildcards allowed for each"
        ));
    }
    entry.parse()
}
