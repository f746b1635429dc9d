//! `doorless-edge init`: create the state directory (CAs, keys) and an example `edge.toml`.

use anyhow::Context as _;

use crate::StateArg;

/// The arguments of `init` (its help text is on `Command::Init`, which clap prefers).
#[derive(Debug, clap::Args)]
pub(crate) struct Init {
    #[command(flatten)]
    state: StateArg,
    /// Public address of this edge's tunnel listener (HOST:PORT) for enrollment tokens.
    /// Default: each site's first hostname on port 443.
    #[arg(long)]
    edge_addr: Option<String>,
}

impl Init {
    /// Runs the verb.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self { state, edge_addr } = self;
        let state = pki::StateDir::init(&state.state_dir, &pki::InitOptions { edge_addr })?;
        let example = state.root().join("edge.toml");
        let text = format!(
            "# doorless-edge configuration; every key is described in docs/config.md.\n\
         state_dir = \"{}\"\n\n\
         [listen]\n\
         https = \"0.0.0.0:443\"    # TCP, browsers and apps\n\
         tunnel = \"0.0.0.0:443\"   # UDP, QUIC from connectors\n\
         admin = \"127.0.0.1:9470\" # /healthz /readyz /status\n",
            state.root().display()
        );
        std::fs::write(&example, text).with_context(|| format!("writing {}", example.display()))?;
        println!("Initialised {}", state.root().display());
        println!("Example configuration: {}", example.display());
        println!(
            "Next: doorless-edge site add NAME --hostname ha.example.com --state-dir {}",
            state.root().display()
        );
        Ok(())
    }
}
