//! Lua scripts: embedded at build time from `lua/`, loaded at start, called by
//! EVALSHA. On a NOSCRIPT reply (Redis restarted, `SCRIPT FLUSH`) the call is
//! repeated as EVAL with the embedded source, which runs the script and caches
//! it again in one step: unlike SCRIPT LOAD then EVALSHA, no flush can slip in
//! between, so callers never see NOSCRIPT. Scripts are loaded on every
//! primary of a cluster (fred's `Script::load` is `SCRIPT LOAD` on each).
//!
//! On a cluster, a call answered `TRYAGAIN` (its slot is being migrated and
//! only some of its keys have moved) did not run: Redis refuses it before
//! running anything. It is sent again after a short pause, a bounded number
//! of times (`REDIS_TRYAGAIN_RETRIES_MAX`), then fails like any call.

use std::borrow::Cow;

use fred::clients::{Client, Pool};
use fred::interfaces::LuaInterface;
use fred::types::scripts::Script;
use fred::types::{MultipleKeys, Value};

use crate::limits::{REDIS_RESEND_PAUSE, REDIS_RESENDS_MAX, REDIS_TRYAGAIN_PAUSE, REDIS_TRYAGAIN_RETRIES_MAX};
use crate::telemetry;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ScriptError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("the engine is overloaded: too many requests are waiting for Redis; retry shortly")]
    Overloaded,
    #[error("script {script} replied with an unexpected shape: {detail}")]
    UnexpectedReply { script: &'static str, detail: String },
}

/// One script of `lua/`, with the SHA1 it is called by.
pub struct LuaScript {
    name: &'static str,
    lua: &'static str,
    script: Script,
}

impl LuaScript {
    pub fn new(name: &'static str, lua: &'static str) -> Self {
        Self {
            name,
            lua,
            script: Script::from_lua(lua),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `SCRIPT LOAD` on the server, or on every primary of a cluster.
    pub async fn load(&self, redis: &Pool) -> Result<(), ScriptError> {
        self.script.load(redis.next()).await?;
        Ok(())
    }

    /// One EVALSHA; the reply is the script's array.
    pub async fn call<K>(&self, redis: &Pool, keys: K, args: Vec<Value>) -> Result<Vec<Value>, ScriptError>
    where
        K: Into<MultipleKeys> + Send,
    {
        self.call_on(redis.next(), keys, args, Marked::No).await
    }

    /// [`call`](Self::call) on one client of the pool, for a caller that
    /// sends a command after it on the same connection (`WAIT`). A
    /// [`Marked::Yes`] call (a batch script's: its mark is its last key) is
    /// sent again when fred failed it without knowing whether it ran.
    pub async fn call_on<K>(
        &self,
        client: &Client,
        keys: K,
        args: Vec<Value>,
        marked: Marked,
    ) -> Result<Vec<Value>, ScriptError>
    where
        K: Into<MultipleKeys> + Send,
    {
        let keys: MultipleKeys = keys.into();
        let (mut tryagain, mut resent) = (0, 0);
        // The error of the first sending: what a resend answered `SEEN`
        // (the first one ran) leaves the caller with, an unknown outcome.
        let mut first: Option<fred::error::Error> = None;
        let reply: Value = loop {
            let sent = match self.script.evalsha(client, keys.clone(), args.clone()).await {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    client.eval(self.lua, keys.clone(), args.clone()).await
                }
                other => other,
            };
            match sent {
                Err(e) if e.details().starts_with("TRYAGAIN") && tryagain < REDIS_TRYAGAIN_RETRIES_MAX => {
                    tryagain += 1;
                    tokio::time::sleep(REDIS_TRYAGAIN_PAUSE).await;
                }
                Err(e) if marked == Marked::Yes && unknown_to_fred(&e) && resent < REDIS_RESENDS_MAX => {
                    resent += 1;
                    telemetry::redis_resent(self.name, "sent");
                    first.get_or_insert(e);
                    tokio::time::sleep(REDIS_RESEND_PAUSE).await;
                }
                Err(e) if e.details().starts_with("SEEN") => {
                    telemetry::redis_resent(self.name, "seen");
                    return Err(first.unwrap_or(e).into());
                }
                other => break other?,
            }
        };
        match reply {
            Value::Array(values) if !values.is_empty() => Ok(values),
            other => Err(self.unexpected(format!("{other:?}"))),
        }
    }

    pub fn unexpected(&self, detail: impl Into<String>) -> ScriptError {
        ScriptError::UnexpectedReply {
            script: self.name,
            detail: detail.into(),
        }
    }
}

/// Whether a call may be sent again: [`Marked::Yes`] when its script sets a
/// mark as it runs and answers `SEEN` when it finds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    Yes,
    No,
}

/// The errors fred fails a command with when its one write attempt is spent
/// and it cannot say whether the command ran: after a `MOVED` (it re-read
/// the slot map; the command did not run), after an `ASK` (not run either),
/// and for a command in flight on a connection it dropped (it may have run).
/// Read in fred 10.1's `router/commands.rs` and `router/utils.rs`.
fn unknown_to_fred(e: &fred::error::Error) -> bool {
    matches!(e.details(), "Too many failed write attempts." | "Max attempts reached.")
}

/// Reads reply element `index` as a string.
pub fn reply_str(script: &LuaScript, reply: &[Value], index: usize) -> Result<String, ScriptError> {
    reply_text(script, reply, index).map(Cow::into_owned)
}

/// Reads reply element `index` as text, borrowed where it is a string.
pub fn reply_text<'a>(script: &LuaScript, reply: &'a [Value], index: usize) -> Result<Cow<'a, str>, ScriptError> {
    reply
        .get(index)
        .and_then(value_text)
        .ok_or_else(|| script.unexpected(format!("element {index} of {reply:?} is not a string")))
}

/// A reply value as text: strings borrowed, bytes if UTF-8, scalars
/// formatted, nil as none. fred's own `as_string` copies a string through
/// `Display`, which took ~3% of the engine's CPU under order load (perf).
pub fn value_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(&**s)),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        other => other.as_string().map(Cow::Owned),
    }
}

/// Reads reply element `index` as an integer.
pub fn reply_i64(script: &LuaScript, reply: &[Value], index: usize) -> Result<i64, ScriptError> {
    reply
        .get(index)
        .and_then(|v| v.as_i64())
        .ok_or_else(|| script.unexpected(format!("element {index} of {reply:?} is not an integer")))
}
