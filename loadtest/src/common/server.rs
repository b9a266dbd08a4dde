//! Which server a run loads: the engine, or the baseline server the engine
//! is measured against (loadtest/src/bin/baseline-server.rs).

/// What the driver loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// The stampede engine: every check applies.
    Engine,
    /// `baseline-server`: hyper and one EVALSHA per request; no Postgres.
    Baseline,
}

impl ServerKind {
    /// The name in the JSON summary.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Engine => "engine",
            ServerKind::Baseline => "baseline",
        }
    }

    /// The name in the printed report.
    pub fn label(self) -> &'static str {
        match self {
            ServerKind::Engine => "engine",
            ServerKind::Baseline => "baseline server",
        }
    }
}
