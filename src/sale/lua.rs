//! Rust bindings of the sale's scripts: typed arguments in, typed outcomes
//! out. The scripts' reply strings are decoded here and nowhere else.

use std::sync::LazyLock;

use fred::interfaces::{ClientLike, HashesInterface};
use fred::types::Value;

use super::SaleError;
use super::domain::{CheckoutCode, ItemId, SaleWindow, UserId};
use super::limits::{CHECKOUT_CODES_PER_USER_MAX, CODE_RETENTION_AFTER_EXPIRY, SALE_RETENTION_AFTER_END};
use crate::redis::executor::{BatchScript, Executor, batch_script};
use crate::redis::keyspace::{Keyspace, Shard};
use crate::redis::lua::{LuaScript, reply_i64, reply_str};

/// A call's checkouts are mostly of one sale: its keys and settings, the
/// first 3 keys and 7 arguments of each, go once per run of them.
pub static CHECKOUT: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("checkout", 4, 14).sharing(3, 7));
pub static PURCHASE: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("purchase", 3, 3));

/// The shard of part `part` of sale `sale_id`. A sale that is not split is
/// all part 0, on the sale's own shard; the parts of a split sale are on
/// consecutive shard indices (`Keyspace::shard_of_part`), each its own hash
/// slot.
pub fn part_shard(keys: &Keyspace, sale_id: u64, part: u32) -> Shard {
    keys.shard_of_part(sale_id, part)
}

/// The keys of one part of a sale; all in the part's shard, so one hash
/// slot. A sale that is not split has one part, 0.
pub struct SaleKeys {
    pub shard: Shard,
    pub meta: String,
    pub sold: String,
    pub users: String,
    /// How long the part's shard's key start is: `meta` begins with it,
    /// and codes and tickets follow it.
    start_len: usize,
}

impl SaleKeys {
    pub fn new(keys: &Keyspace, sale_id: u64) -> Self {
        Self::of_part(keys, sale_id, 0)
    }

    /// Built for every checkout and purchase: the sale's key is formatted
    /// once and the others are joined to it, with no formatting of their own.
    pub fn of_part(keys: &Keyspace, sale_id: u64, part: u32) -> Self {
        let shard = part_shard(keys, sale_id, part);
        let meta = keys.key(shard, format_args!("sale:{sale_id}"));
        Self {
            shard,
            sold: [meta.as_str(), ":sold"].concat(),
            users: [meta.as_str(), ":users"].concat(),
            meta,
            start_len: keys.key_start(shard).len(),
        }
    }

    /// A split sale's reservations on this part (sale_user.lua).
    pub fn reserving(&self) -> String {
        [self.meta.as_str(), ":reserving"].concat()
    }

    pub fn code(&self, code: &CheckoutCode) -> String {
        self.under_start("code:", code)
    }

    /// A split sale's code on the user's part (sale_user.lua).
    pub fn ticket(&self, code: &CheckoutCode) -> String {
        self.under_start("ticket:", code)
    }

    fn under_start(&self, kind: &str, code: &CheckoutCode) -> String {
        let start = self.meta.get(..self.start_len).unwrap_or_default();
        [start, kind, code.as_str()].concat()
    }
}

/// A sale as Redis holds it, over all its parts: the size and limit it
/// opened with (`None` before its first checkout), and the items sold.
pub struct SaleProgress {
    pub items: Option<u64>,
    pub limit: Option<u64>,
    pub sold: u64,
}

/// Reads [`SaleProgress`] of `sale_id`, split over `split` parts: a split
/// sale's parts each hold their share of the sold items, and each opens on
/// its own first checkout. Read-only.
pub async fn progress(
    redis: &fred::clients::Pool,
    keys: &Keyspace,
    sale_id: u64,
    split: u32,
) -> Result<SaleProgress, fred::error::Error> {
    let mut progress = SaleProgress {
        items: None,
        limit: None,
        sold: 0,
    };
    for part in 0..split {
        let keys = SaleKeys::of_part(keys, sale_id, part);
        let (items, limit): (Option<u64>, Option<u64>) = redis.hmget(&keys.meta, vec!["items", "limit"]).await?;
        progress.items = progress.items.or(items);
        progress.limit = progress.limit.or(limit);
        let sold: u64 = redis.custom(fred::cmd!("BITCOUNT"), vec![keys.sold]).await?;
        progress.sold += sold;
    }
    Ok(progress)
}

/// Decodes a script's outcome: `Ok` or a refusal, counted either way.
pub(super) fn outcome(script: &LuaScript, reply: &[Value]) -> Result<(), SaleError> {
    let text = reply_str(script, reply, 0)?;
    let decoded = match text.as_str() {
        "OK" => Ok(()),
        "ITEM_NOT_FOUND" => Err(SaleError::ItemNotFound),
        "ITEM_SOLD" => Err(SaleError::ItemSold),
        "USER_LIMIT_REACHED" => Err(SaleError::UserLimitReached),
        // `checkout` sets the wait: it knows when the sale ends.
        "TOO_MANY_CHECKOUTS" => Err(SaleError::TooManyCheckouts { retry_after_secs: 0 }),
        "CODE_NOT_FOUND" => Err(SaleError::CodeNotFound),
        "CODE_USED" => Err(SaleError::CodeUsed),
        "CODE_EXPIRED" => Err(SaleError::CodeExpired),
        "SALE_OVER" => Err(SaleError::SaleOver),
        "OUTBOX_FULL" => Err(SaleError::OutboxFull),
        "REFUSALS_FULL" => Err(SaleError::RefusalsFull),
        other => {
            return Err(SaleError::Script(
                script.unexpected(format!("unknown outcome {other:?}")),
            ));
        }
    };
    let label = match &decoded {
        Ok(()) => "OK",
        Err(e) => e.outcome_label(),
    };
    crate::telemetry::script_outcome(script.name(), label);
    decoded
}

pub struct CheckoutRequest<'a> {
    pub window: SaleWindow,
    pub items: u32,
    pub per_user_limit: u32,
    pub user: &'a UserId,
    pub item: ItemId,
    pub code: &'a CheckoutCode,
    pub now_ms: i64,
    pub expires_ms: i64,
    /// Unflushed events past which a refused attempt is shed rather than
    /// recorded: its share of the outbox bound.
    pub refused_bound: u64,
}

/// Runs checkout.lua. `Ok` means a code was issued; every other outcome is a
/// refusal, and was recorded in the outbox all the same, except the two
/// 503s (`OutboxFull`, `RefusalsFull`), which record nothing.
pub async fn checkout(executor: &Executor, keys: &Keyspace, req: CheckoutRequest<'_>) -> Result<(), SaleError> {
    let sale_keys = SaleKeys::new(keys, req.window.sale_id);
    let code_key = sale_keys.code(req.code);
    let code_ttl_ms = (req.expires_ms - req.now_ms).max(1) + CODE_RETENTION_AFTER_EXPIRY.as_millis() as i64;
    let sale_ttl_ms = (req.window.ends_ms - req.now_ms).max(1) + SALE_RETENTION_AFTER_END.as_millis() as i64;
    // The sale's part first (shared by the call's checkouts of the sale),
    // then the request's own.
    let args: Vec<Value> = vec![
        (req.window.sale_id as i64).into(),
        req.window.starts_ms.into(),
        req.window.ends_ms.into(),
        i64::from(req.items).into(),
        i64::from(req.per_user_limit).into(),
        i64::from(CHECKOUT_CODES_PER_USER_MAX).into(),
        (req.refused_bound as i64).into(),
        req.now_ms.into(),
        i64::from(req.item.get()).into(),
        req.user.as_str().into(),
        req.code.as_str().into(),
        req.expires_ms.into(),
        code_ttl_ms.into(),
        sale_ttl_ms.into(),
    ];
    let script = &*CHECKOUT;
    let reply = executor
        .call(
            script,
            sale_keys.shard,
            vec![sale_keys.meta, sale_keys.sold, sale_keys.users, code_key],
            args,
        )
        .await?;
    outcome(&script.lua, &reply).map_err(|e| with_retry_after(e, &req))
}

/// Sets the wait of `TOO_MANY_CHECKOUTS`: the cap is per sale, so the next
/// sale is the first that can take another checkout of this user.
pub fn with_retry_after(e: SaleError, req: &CheckoutRequest<'_>) -> SaleError {
    match e {
        SaleError::TooManyCheckouts { .. } => SaleError::TooManyCheckouts {
            retry_after_secs: u32::try_from(((req.window.ends_ms - req.now_ms).max(1) + 999) / 1000)
                .unwrap_or(u32::MAX),
        },
        other => other,
    }
}

/// What a successful purchase reports back.
#[derive(Debug, Clone, Copy)]
pub struct Purchased {
    pub item_id: i64,
    pub user_purchases: i64,
}

/// Runs purchase.lua: spends the code if everything still holds.
pub async fn purchase(
    executor: &Executor,
    keys: &Keyspace,
    code: &CheckoutCode,
    active: SaleWindow,
    now_ms: i64,
) -> Result<Purchased, SaleError> {
    let sale_keys = SaleKeys::new(keys, code.sale_id());
    let code_key = sale_keys.code(code);
    // The code's own sale decides which keys are read; the active sale id is
    // passed so the script can refuse codes of a finished sale.
    let args: Vec<Value> = vec![now_ms.into(), (active.sale_id as i64).into(), code.as_str().into()];
    let script = &*PURCHASE;
    let reply = executor
        .call(
            script,
            sale_keys.shard,
            vec![code_key, sale_keys.sold, sale_keys.users],
            args,
        )
        .await?;
    outcome(&script.lua, &reply)?;
    Ok(Purchased {
        item_id: reply_i64(&script.lua, &reply, 1)?,
        user_purchases: reply_i64(&script.lua, &reply, 2)?,
    })
}
