//! The batched script executor: one EVALSHA serves many requests.
//!
//! Calls of one script for one shard share a bounded queue. A worker takes
//! every request waiting in it (up to `SCRIPT_BATCH_REQUESTS_MAX`) and sends
//! them as one call of the script's batch form, which judges each request in
//! order, each atomically, exactly as it would alone. While that call is in
//! flight, new requests queue and ride the next one. There is no timer: at
//! low load a batch holds one request and waits for nothing.
//!
//! The batch protocol every batch script follows:
//! - KEYS: 1 the shard's outbox stream, 2 its unflushed-event counter, then
//!   `keys_per_request` keys per request, then the call's mark;
//! - ARGV: 1 number of requests, 2 the outbox bound in events, then
//!   `args_per_request` arguments per request, then the mark's lifetime;
//! - a script may declare the leading `shared_keys` keys and `shared_args`
//!   arguments of its requests shared (the keys and settings of the entity
//!   the requests act on, the same for most requests of a call). Then each
//!   request's arguments start with a flag: `1` and its shared part, when
//!   that differs from the previous request's (always for the first), or
//!   `0` and none, when it is the same; its own keys and arguments follow.
//!   Each argument costs the script 0.05–0.1 µs to receive (measured), so
//!   a call of 150 requests on one entity sends its part once, not 150
//!   times;
//! - reply: one array per request, in order;
//! - events: at most one `XADD` per call, of `kind, values` pairs (see
//!   `crate::outbox`), and `INCRBY` of the counter by the number of events.
//!
//! That bookkeeping is written once, in `lua/batch/prologue.lua` and
//! `lua/batch/epilogue.lua`, which [`batch_script!`] joins around each
//! script's own file at build time: a script file holds only its
//! per-request logic.
//!
//! A call that fails (timeout, reset) fails every request in it with the
//! same `ScriptError`: the client cannot tell whether it took effect, which
//! is why features offer a read-only way to look a state up. The Redis
//! clients never resend by themselves (see `client`). A call runs at most
//! once: each carries a mark (a random id, its last key), which the script
//! sets as it runs. When fred fails a call without knowing whether it ran
//! (after a `MOVED` or `ASK` redirection it did not; on a dropped connection
//! it may have), the call is sent again, at most `REDIS_RESENDS_MAX` times;
//! a call that ran finds its mark and answers `SEEN`, and its requests get
//! the first error, an unknown outcome, as before.
//!
//! Overload is answered before Redis: a request finding its queue full, or
//! found by a worker to have waited past the queue deadline, gets
//! `ScriptError::Overloaded` and is never sent, so that answer is certain.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fred::clients::Pool;
use fred::types::Value;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::limits::SCRIPT_BATCH_REQUESTS_MAX;
use crate::redis::keyspace::{Keyspace, Shard};
use crate::redis::lua::{LuaScript, Marked, ScriptError};
use crate::redis::wait::WaitForReplicas;
use crate::telemetry;

/// A [`BatchScript`] named `$name`: `lua/<name>.lua` between the shared
/// `lua/batch/prologue.lua` (the header's keys and arguments, the counter
/// read once, `emit`, `outbox_full`) and `lua/batch/epilogue.lua` (the one
/// `XADD` and `INCRBY`, the replies), joined at build time.
macro_rules! batch_script {
    ($name:literal, $keys_per_request:expr, $args_per_request:expr) => {
        $crate::redis::executor::BatchScript::new(
            $name,
            concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/batch/prologue.lua")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/", $name, ".lua")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/batch/epilogue.lua")),
            ),
            $keys_per_request,
            $args_per_request,
        )
    };
}
pub(crate) use batch_script;

/// A script in batch form, and the shape of one request in it.
pub struct BatchScript {
    pub lua: LuaScript,
    pub keys_per_request: usize,
    pub args_per_request: usize,
    /// How many of a request's leading keys and arguments are sent once for
    /// a run of requests that share them (see the protocol above); 0 and 0
    /// for a script that takes every request whole.
    pub shared_keys: usize,
    pub shared_args: usize,
}

impl BatchScript {
    pub fn new(name: &'static str, lua: &'static str, keys_per_request: usize, args_per_request: usize) -> Self {
        Self {
            lua: LuaScript::new(name, lua),
            keys_per_request,
            args_per_request,
            shared_keys: 0,
            shared_args: 0,
        }
    }

    /// The same script, its requests' first `keys` keys and `args`
    /// arguments shared (at most all of them).
    pub fn sharing(self, keys: usize, args: usize) -> Self {
        Self {
            shared_keys: keys.min(self.keys_per_request),
            shared_args: args.min(self.args_per_request),
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ExecutorConfig {
    /// Calls in flight at once per queue: with 2, Redis runs one batch while
    /// the reply of the previous one travels back.
    pub inflight: usize,
    /// Unflushed events a shard's outbox may hold before writes are shed.
    pub outbox_events_max: u64,
    /// Requests that may wait in one queue; beyond, `Overloaded` at once.
    pub queue_max: usize,
    /// A request that waited longer than this is shed, never sent.
    pub queue_deadline: Duration,
    /// How long a call's mark lives (`lua/batch/prologue.lua`): longer than
    /// every sending of the call can take.
    pub mark_ttl: Duration,
    /// Replicas each call's writes must reach before its requests are
    /// answered (`WAIT`); `None`: answered as soon as the primary ran it.
    pub wait: Option<WaitForReplicas>,
}

struct Job {
    keys: Vec<String>,
    args: Vec<Value>,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Value, ScriptError>>,
}

/// Cheap to clone; the workers end when the last clone is dropped. Built
/// before the features (they hold a clone), started once they are all known.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Pool,
    keys: Keyspace,
    config: ExecutorConfig,
    queues: OnceLock<HashMap<(&'static str, Shard), mpsc::Sender<Job>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("script {0} is registered twice")]
    Duplicate(&'static str),
    #[error("the executor was started twice")]
    StartedTwice,
}

impl Executor {
    pub fn new(redis: Pool, keys: Keyspace, config: ExecutorConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                keys,
                config,
                queues: OnceLock::new(),
            }),
        }
    }

    /// Starts the workers of every script on every shard. Must run inside
    /// the runtime that serves.
    pub fn start(&self, scripts: &[&'static BatchScript]) -> Result<(), ExecutorError> {
        let inner = &self.inner;
        let mut queues = HashMap::new();
        let mut workers = Vec::new();
        for script in scripts {
            for shard in inner.keys.shards() {
                let (tx, rx) = mpsc::channel(inner.config.queue_max.max(1));
                if queues.insert((script.lua.name(), shard), tx).is_some() {
                    return Err(ExecutorError::Duplicate(script.lua.name()));
                }
                let rx = Arc::new(Mutex::new(rx));
                let header = Header {
                    outbox: inner.keys.outbox(shard),
                    counter: inner.keys.outbox_events(shard),
                    mark_prefix: inner.keys.batch_mark_prefix(shard),
                    outbox_events_max: inner.config.outbox_events_max,
                    mark_ttl_ms: inner.config.mark_ttl.as_millis() as i64,
                    queue_deadline: inner.config.queue_deadline,
                    wait: inner.config.wait,
                    slot: fred::util::redis_keyslot(inner.keys.outbox(shard).as_bytes()),
                };
                for _ in 0..inner.config.inflight.max(1) {
                    workers.push((*script, header.clone(), rx.clone()));
                }
            }
        }
        inner.queues.set(queues).map_err(|_| ExecutorError::StartedTwice)?;
        for (script, header, rx) in workers {
            tokio::spawn(worker(script, inner.redis.clone(), header, rx));
        }
        Ok(())
    }

    /// Runs one request of `script` on `shard`; returns its reply array.
    /// `keys` and `args` must have the script's per-request lengths.
    pub async fn call(
        &self,
        script: &'static BatchScript,
        shard: Shard,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, ScriptError> {
        if keys.len() != script.keys_per_request || args.len() != script.args_per_request {
            return Err(script.lua.unexpected(format!(
                "request has {} keys and {} args; the script takes {} and {}",
                keys.len(),
                args.len(),
                script.keys_per_request,
                script.args_per_request
            )));
        }
        let queue = self
            .inner
            .queues
            .get()
            .and_then(|queues| queues.get(&(script.lua.name(), shard)))
            .ok_or_else(|| script.lua.unexpected("script not registered with the executor"))?;
        let (reply, answer) = oneshot::channel();
        // Full queue: shed at once instead of growing or waiting unbounded.
        let job = Job {
            keys,
            args,
            queued_at: Instant::now(),
            reply,
        };
        if queue.try_send(job).is_err() {
            telemetry::script_shed(script.lua.name(), "queue_full");
            return Err(ScriptError::Overloaded);
        }
        match answer.await {
            Ok(Ok(Value::Array(values))) if !values.is_empty() => Ok(values),
            Ok(Ok(other)) => Err(script.lua.unexpected(format!("request reply {other:?}"))),
            Ok(Err(e)) => Err(e),
            // The worker is gone: the engine is shutting down.
            Err(_) => Err(ScriptError::Overloaded),
        }
    }
}

#[derive(Clone)]
struct Header {
    outbox: String,
    counter: String,
    /// A call's mark is this and a random id (see `lua/batch/prologue.lua`).
    mark_prefix: String,
    mark_ttl_ms: i64,
    outbox_events_max: u64,
    queue_deadline: Duration,
    wait: Option<WaitForReplicas>,
    /// The shard's hash slot: where its `WAIT` goes on a cluster.
    slot: u16,
}

async fn worker(script: &'static BatchScript, redis: Pool, header: Header, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(SCRIPT_BATCH_REQUESTS_MAX);
    loop {
        {
            // One worker waits on the queue at a time; the others are in
            // flight. It takes all that waits, up to the batch bound,
            // shedding what waited past the deadline (it never reaches Redis).
            let mut queue = queue.lock().await;
            while jobs.is_empty() {
                let Some(job) = queue.recv().await else {
                    return;
                };
                let now = Instant::now();
                admit(script, &header, now, job, &mut jobs);
                while jobs.len() < SCRIPT_BATCH_REQUESTS_MAX {
                    match queue.try_recv() {
                        Ok(job) => admit(script, &header, now, job, &mut jobs),
                        Err(_) => break,
                    }
                }
            }
        }
        run_batch(script, &redis, &header, &mut jobs).await;
    }
}

/// Puts `job` in the batch, or answers it `Overloaded` if it waited past the
/// deadline: by then its client is better told to retry than kept waiting,
/// and serving it would only delay every request behind it.
fn admit(script: &'static BatchScript, header: &Header, now: Instant, job: Job, jobs: &mut Vec<Job>) {
    if now.saturating_duration_since(job.queued_at) > header.queue_deadline {
        telemetry::script_shed(script.lua.name(), "deadline");
        let _ = job.reply.send(Err(ScriptError::Overloaded));
    } else {
        jobs.push(job);
    }
}

/// Appends the requests of `jobs` to a call's keys and arguments, in order:
/// each whole, or, for a script that shares a part of its requests, a flag,
/// the shared part only where it differs from the previous request's, and
/// the request's own keys and arguments.
fn append_requests(script: &BatchScript, jobs: &mut [Job], keys: &mut Vec<String>, args: &mut Vec<Value>) {
    let (shared_keys, shared_args) = (script.shared_keys, script.shared_args);
    if shared_keys == 0 && shared_args == 0 {
        for job in jobs.iter_mut() {
            keys.append(&mut job.keys);
            args.append(&mut job.args);
        }
        return;
    }
    // Where the last shared part sent starts, in `keys` and `args`.
    let mut last: Option<(usize, usize)> = None;
    for job in jobs.iter_mut() {
        // `call` checked each request's lengths, and the shared counts are
        // at most those.
        let same = last.is_some_and(|(k, a)| {
            keys.get(k..k + shared_keys) == job.keys.get(..shared_keys)
                && args.get(a..a + shared_args) == job.args.get(..shared_args)
        });
        if same {
            args.push(0.into());
            keys.extend(job.keys.drain(shared_keys.min(job.keys.len())..));
            args.extend(job.args.drain(shared_args.min(job.args.len())..));
        } else {
            args.push(1.into());
            last = Some((keys.len(), args.len()));
            keys.append(&mut job.keys);
            args.append(&mut job.args);
        }
    }
}

async fn run_batch(script: &'static BatchScript, redis: &Pool, header: &Header, jobs: &mut Vec<Job>) {
    let n = jobs.len();
    telemetry::script_batch(script.lua.name(), n);
    let mut keys = Vec::with_capacity(3 + n * script.keys_per_request);
    keys.push(header.outbox.clone());
    keys.push(header.counter.clone());
    let mut args: Vec<Value> = Vec::with_capacity(3 + n * (1 + script.args_per_request));
    args.push((n as i64).into());
    args.push((header.outbox_events_max as i64).into());
    append_requests(script, jobs, &mut keys, &mut args);
    keys.push(format!("{}{:016x}", header.mark_prefix, rand::random::<u64>()));
    args.push(header.mark_ttl_ms.into());
    // WAIT must follow the call on its connection: the same client.
    let client = redis.next();
    let mut called = script.lua.call_on(client, keys, args, Marked::Yes).await;
    if let (Ok(_), Some(wait)) = (&called, header.wait)
        && let Err(e) = wait.replicated(client, header.slot).await
    {
        telemetry::redis_wait_failed(script.lua.name(), n);
        called = Err(ScriptError::Redis(e));
    }
    match called {
        Ok(replies) if replies.len() == n => {
            for (job, reply) in jobs.drain(..).zip(replies) {
                // A client that hung up no longer waits; its effect stands.
                let _ = job.reply.send(Ok(reply));
            }
        }
        Ok(replies) => {
            let error = script
                .lua
                .unexpected(format!("{} replies for {n} requests", replies.len()));
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(keys: &[&str], args: &[i64]) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            args: args.iter().map(|&a| a.into()).collect(),
            queued_at: Instant::now(),
            reply,
        }
    }

    fn assembled(script: &BatchScript, mut jobs: Vec<Job>) -> (Vec<String>, Vec<i64>) {
        let (mut keys, mut args) = (Vec::new(), Vec::new());
        append_requests(script, &mut jobs, &mut keys, &mut args);
        let args = args.iter().map(|v| v.as_i64().expect("an integer")).collect();
        (keys, args)
    }

    #[test]
    fn a_shared_part_is_sent_once_for_each_run_of_requests_that_share_it() {
        let script = BatchScript::new("t", "", 2, 3).sharing(1, 2);
        let jobs = vec![
            job(&["s1", "a"], &[10, 11, 1]),
            job(&["s1", "b"], &[10, 11, 2]),
            job(&["s2", "c"], &[10, 11, 3]),
            job(&["s1", "d"], &[10, 11, 4]),
            // The same key, another shared argument: sent again.
            job(&["s1", "e"], &[10, 12, 5]),
        ];
        let (keys, args) = assembled(&script, jobs);
        assert_eq!(keys, ["s1", "a", "b", "s2", "c", "s1", "d", "s1", "e"]);
        assert_eq!(args, [1, 10, 11, 1, 0, 2, 1, 10, 11, 3, 1, 10, 11, 4, 1, 10, 12, 5]);
    }

    #[test]
    fn a_script_that_shares_nothing_takes_each_request_whole() {
        let script = BatchScript::new("t", "", 2, 2);
        let (keys, args) = assembled(&script, vec![job(&["s1", "a"], &[1, 2]), job(&["s1", "b"], &[1, 3])]);
        assert_eq!(keys, ["s1", "a", "s1", "b"]);
        assert_eq!(args, [1, 2, 1, 3]);
    }

    #[test]
    fn sharing_is_at_most_the_whole_request() {
        let script = BatchScript::new("t", "", 2, 3).sharing(5, 7);
        assert_eq!((script.shared_keys, script.shared_args), (2, 3));
    }
}
