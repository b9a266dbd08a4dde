//! `WAIT` after a batch call: the call's writes reach `n` replicas before any
//! request of the batch is answered (`STAMPEDE_REDIS_WAIT_REPLICAS`).
//!
//! Redis replicates asynchronously: a primary acknowledges a script as soon
//! as it ran, and a primary that dies before its replica received the write
//! loses it when that replica is promoted. `WAIT n timeout` blocks the
//! connection that sent it until `n` replicas acknowledged every write sent
//! before it on that connection, and answers how many did. So it must go on
//! the same client (one connection per node) and to the same node as the
//! script call: on a cluster, to the primary that owns the batch's hash slot.
//!
//! Fewer than `n` in time means the write stands on the primary but may not
//! survive a failover: the requests answer as an unknown outcome (503
//! `REDIS_UNAVAILABLE`), like a reply lost on the wire, and are resolvable
//! the same way. `WAIT` is not consensus: see ARCHITECTURE.md ("An
//! acknowledged write survives a failover").

use std::time::Duration;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::{CustomCommand, Value};

#[derive(Debug, Clone, Copy)]
pub struct WaitForReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

impl WaitForReplicas {
    /// `None` when no replica is asked for: no `WAIT` is sent.
    pub fn new(replicas: u32, timeout: Duration) -> Option<Self> {
        (replicas > 0).then_some(Self { replicas, timeout })
    }

    /// `WAIT` on `client`, routed to the node owning `slot`; `Ok` once
    /// enough replicas acknowledged, an error the callers treat as an
    /// unknown outcome otherwise.
    ///
    /// Sent as a non-blocking custom command so that fred pipelines it like
    /// the script calls: declared blocking, fred would hold every other
    /// command of this client (on every node) until it answers. Redis still
    /// runs the connection's commands in order, so those sent after it wait
    /// for it on that node only. fred sends it once (`client`: at most one
    /// attempt); it changes nothing, so a lost reply only costs the answer.
    pub async fn replicated(&self, client: &Client, slot: u16) -> Result<(), Error> {
        let command = CustomCommand::new("WAIT", Some(slot), false);
        let args: Vec<Value> = vec![
            i64::from(self.replicas).into(),
            (self.timeout.as_millis() as i64).into(),
        ];
        let acknowledged: Value = client.custom(command, args).await?;
        match acknowledged.as_i64() {
            Some(n) if n >= i64::from(self.replicas) => Ok(()),
            Some(n) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "WAIT: {n} of {} replica(s) acknowledged the write within {} ms; it may not survive a failover",
                    self.replicas,
                    self.timeout.as_millis()
                ),
            )),
            None => Err(Error::new(
                ErrorKind::Protocol,
                format!("WAIT answered {acknowledged:?}, not a count"),
            )),
        }
    }
}
