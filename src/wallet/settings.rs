//! The wallet's settings, read from the environment at start (docs/wallet.md,
//! "Settings").

use super::limits::{WALLET_SSE_STREAMS_CEILING, WALLET_SSE_STREAMS_DEFAULT};
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct WalletSettings {
    /// `STAMPEDE_SSE_STREAMS_MAX`: open event streams on this engine.
    pub sse_streams_max: usize,
}

impl WalletSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            sse_streams_max: env.number(
                "STAMPEDE_SSE_STREAMS_MAX",
                WALLET_SSE_STREAMS_DEFAULT,
                1,
                WALLET_SSE_STREAMS_CEILING,
            )?,
        })
    }
}
