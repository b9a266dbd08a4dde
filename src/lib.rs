//! stampede: a Redis-first flash-sale engine.
//!
//! # Layout
//!
//! Four layers, from the bottom up; each imports only the layers below it
//! (earlier in this list), which `tests/structure.rs` checks:
//!
//! 1. Infrastructure, which names no feature: [`config`] (the shared
//!    settings), [`clock`], [`ticker`] (the loop of a periodic background
//!    pass), [`limits`] (the shared bounds), [`telemetry`]
//!    (logs and the shared metrics), [`postgres`], [`redis`] (the client
//!    builder, the Redis settings checked at start, the key space, Lua
//!    loading with EVALSHA and reload, the batched script executor),
//!    [`outbox`] (the Redis Stream outboxes, the flusher, its sink registry
//!    and dead letters) and [`context`] (what every feature is given).
//! 2. The HTTP toolkit, [`server`]: listeners, routes as data, the router,
//!    the error trait, request helpers, the admin guard, the API document
//!    and the `Feature` contract. It imports infrastructure only and names
//!    no feature.
//! 3. Features, one folder each, importing infrastructure and the toolkit
//!    only (never another feature, never the wiring): [`sale`] (hourly flash
//!    sales, checkout codes, purchases), [`ingest`] (NDJSON purchase uploads
//!    and loyalty), [`orders`] (limited-stock products, orders, holds,
//!    idempotency keys, reconciliation), [`wallet`] (player wallets, bonus
//!    wagering, live events), [`settlement`] (settlement jobs over
//!    merchants' transactions). A feature owns its routes, errors, Lua
//!    bindings (`lua.rs`), outbox sink, settings (`settings.rs`), bounds
//!    (`limits.rs`) and metrics (`metrics.rs`).
//! 4. The wiring, [`app`]: start-up and the feature list, with `app::ops`
//!    (index, health, metrics, the API document), `app::dead_letters` (the
//!    outbox's dead letters) and `app::live` (the live page). Nothing but
//!    the binary (`main.rs`) imports it.
//!
//! See ARCHITECTURE.md for the invariants and where each is upheld.

pub mod app;
pub mod clock;
pub mod config;
pub mod context;
pub mod ingest;
pub mod limits;
pub mod orders;
pub mod outbox;
pub mod postgres;
pub mod redis;
pub mod sale;
pub mod server;
pub mod settlement;
pub mod telemetry;
pub mod ticker;
pub mod wallet;
