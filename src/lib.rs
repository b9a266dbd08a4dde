//! stampede: a Redis-first flash-sale engine.
//!
//! # Layout
//!
//! Layers, each importing only those below it:
//!
//! 1. Infrastructure: [`config`], [`clock`], [`limits`], [`telemetry`],
//!    [`postgres`], [`redis`] (the client builder, the Redis settings checked
//!    at start, the key space, Lua loading with EVALSHA and reload, and the
//!    batched script executor), [`outbox`] (the Redis Stream outboxes, the
//!    flusher and its sink registry), and [`context`] (what features may
//!    use).
//! 2. The HTTP toolkit, [`server`]: listeners, routes as data, the router,
//!    the error trait, request helpers, the admin guard and the `Feature`
//!    contract. It names no feature.
//! 3. Features, each owning its routes, errors, scripts and sink, importing
//!    only the two layers above: [`sale`] (hourly flash sales, checkout
//!    codes, purchases), [`ingest`] (NDJSON purchase uploads and loyalty),
//!    [`orders`] (limited-stock products, orders, holds, idempotency keys,
//!    reconciliation), [`wallet`] (player wallets, bonus wagering, live
//!    events), [`settlement`] (settlement jobs over merchants'
//!    transactions).
//! 4. Wiring, [`app`]: start-up and the feature list, with `app::ops`
//!    (index, health, metrics, the API document), `app::dead_letters` (the
//!    outbox's dead letters) and `app::live` (the live page).
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
pub mod wallet;
