//! The context every feature is given: configuration, the clock, Redis
//! (through the batched executor for state changes), Postgres and the key
//! space. Built once at start by the wiring (`app`) and shared; it names no
//! feature. (Not to be confused with `scripts/services.sh`, the shell script
//! that starts private Redis and Postgres servers for tests.)

use fred::clients::Pool;
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::redis::executor::Executor;
use crate::redis::keyspace::Keyspace;

pub struct Context {
    pub config: Config,
    pub clock: SharedClock,
    /// For reads only: every state change goes through `executor`.
    pub redis: Pool,
    pub postgres: PgPool,
    pub keys: Keyspace,
    pub executor: Executor,
}
