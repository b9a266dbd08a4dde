//! What every feature may use: configuration, the clock, Redis (through the
//! batched executor for state changes), Postgres and the key space. Built
//! once at start by `app.rs` and shared; it names no feature.

use fred::clients::Pool;
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::redis::executor::Executor;
use crate::redis::keyspace::Keyspace;

pub struct Services {
    pub config: Config,
    pub clock: SharedClock,
    /// For reads only: every state change goes through `executor`.
    pub redis: Pool,
    pub postgres: PgPool,
    pub keys: Keyspace,
    pub executor: Executor,
}
