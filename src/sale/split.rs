//! A sale split over `STAMPEDE_SALE_SPLIT` parts, each on its own hash slot:
//! the steps of a checkout and a purchase across the user's part
//! (`lua/sale_user.lua`) and the item's part (`lua/sale_item.lua`), and the
//! sweeper's resolution of reservations left behind. Each step is one
//! idempotent script call on one slot; the order of the steps keeps the
//! per-user limit exact (docs/sale.md, "A sale split over several slots").

use std::sync::LazyLock;

use fred::types::Value;

use super::SaleError;
use super::domain::{CheckoutCode, ItemId, SaleWindow, UserId};
use super::limits::{CHECKOUT_CODES_PER_USER_MAX, CODE_RETENTION_AFTER_EXPIRY, SALE_RETENTION_AFTER_END};
use super::lua::{CheckoutRequest, Purchased, SaleKeys, outcome};
use crate::redis::executor::{BatchScript, Executor, batch_script};
use crate::redis::keyspace::{Keyspace, stable_hash};
use crate::redis::lua::{ScriptError, reply_i64, reply_str};

pub static SALE_USER: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("sale_user", 4, 16));
pub static SALE_ITEM: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("sale_item", 3, 14));

/// The user's part: a stable hash of the id, so all of a user's counters of
/// a sale are on one slot.
pub fn user_part(user: &UserId, split: u32) -> u32 {
    (stable_hash(user.as_str()) % u64::from(split)) as u32
}

/// The item's part: consecutive items on different parts, so buyers who
/// walk the items in order (as a contest's do) spread over every slot.
pub fn item_part(item: ItemId, split: u32) -> u32 {
    item.get() % split
}

/// The arguments both scripts share, in their order after `op`.
struct Args<'a> {
    now_ms: i64,
    sale_id: u64,
    starts_ms: i64,
    ends_ms: i64,
    items: u32,
    per_user_limit: u32,
    user: &'a str,
    item: u32,
    code: &'a CheckoutCode,
    expires_ms: i64,
    code_ttl_ms: i64,
    sale_ttl_ms: i64,
    refused_bound: u64,
}

impl Args<'_> {
    fn user_side(&self, op: &str, verdict: &str) -> Vec<Value> {
        let mut args = self.common(op);
        args.insert(13, i64::from(CHECKOUT_CODES_PER_USER_MAX).into());
        args.push(verdict.into());
        args
    }

    fn item_side(&self, op: &str) -> Vec<Value> {
        self.common(op)
    }

    fn common(&self, op: &str) -> Vec<Value> {
        vec![
            op.into(),
            self.now_ms.into(),
            (self.sale_id as i64).into(),
            self.starts_ms.into(),
            self.ends_ms.into(),
            i64::from(self.items).into(),
            i64::from(self.per_user_limit).into(),
            self.user.into(),
            i64::from(self.item).into(),
            self.code.as_str().into(),
            self.expires_ms.into(),
            self.code_ttl_ms.into(),
            self.sale_ttl_ms.into(),
            (self.refused_bound as i64).into(),
        ]
    }

    /// For the steps after checkout, which read their facts from the code's
    /// records and need only the clock, the sale and the code.
    fn of_code(now_ms: i64, active_sale: u64, code: &CheckoutCode) -> Args<'_> {
        Args {
            now_ms,
            sale_id: active_sale,
            starts_ms: 0,
            ends_ms: 0,
            items: 0,
            per_user_limit: 0,
            user: "",
            item: 0,
            code,
            expires_ms: 0,
            code_ttl_ms: CODE_RETENTION_AFTER_EXPIRY.as_millis() as i64,
            sale_ttl_ms: 0,
            refused_bound: 0,
        }
    }
}

async fn user_call(
    executor: &Executor,
    part: &SaleKeys,
    code: &CheckoutCode,
    args: Vec<Value>,
) -> Result<Vec<Value>, ScriptError> {
    let keys = vec![
        part.meta.clone(),
        part.users.clone(),
        part.ticket(code),
        part.reserving(),
    ];
    executor.call(&SALE_USER, part.shard, keys, args).await
}

async fn item_call(
    executor: &Executor,
    part: &SaleKeys,
    code: &CheckoutCode,
    args: Vec<Value>,
) -> Result<Vec<Value>, ScriptError> {
    let keys = vec![part.meta.clone(), part.sold.clone(), part.code(code)];
    executor.call(&SALE_ITEM, part.shard, keys, args).await
}

/// The code a split sale's checkout issues: it names the user's and the
/// item's part.
pub fn new_code(window: SaleWindow, user: &UserId, item: ItemId, split: u32) -> CheckoutCode {
    CheckoutCode::generate_split(window.sale_id, user_part(user, split), item_part(item, split))
}

/// Checkout of a split sale: the item's checks on the item's part (which
/// write the code, or record the refusal), then the user's on the user's
/// part (which write the code's ticket and record the attempt). The item's
/// come first, as in the unsplit checkout: a refused checkout, most of a
/// sell-out's traffic once buyers walk past sold items, is then one call on
/// the item's part, which consecutive items spread over every part, instead
/// of two on the buyer's. A code the user's part refused is voided on the
/// item's part; it was never handed out, and without a ticket it cannot be
/// spent either way, so a failed void changes nothing.
pub async fn checkout(
    executor: &Executor,
    keys: &Keyspace,
    req: &CheckoutRequest<'_>,
    split: u32,
) -> Result<(), SaleError> {
    let (u, i) = req.code.parts();
    let user_keys = SaleKeys::of_part(keys, req.window.sale_id, u);
    let item_keys = SaleKeys::of_part(keys, req.window.sale_id, i);
    debug_assert!(u < split && i < split);
    let args = Args {
        now_ms: req.now_ms,
        sale_id: req.window.sale_id,
        starts_ms: req.window.starts_ms,
        ends_ms: req.window.ends_ms,
        items: req.items,
        per_user_limit: req.per_user_limit,
        user: req.user.as_str(),
        item: req.item.get(),
        code: req.code,
        expires_ms: req.expires_ms,
        code_ttl_ms: (req.expires_ms - req.now_ms).max(1) + CODE_RETENTION_AFTER_EXPIRY.as_millis() as i64,
        sale_ttl_ms: (req.window.ends_ms - req.now_ms).max(1) + SALE_RETENTION_AFTER_END.as_millis() as i64,
        refused_bound: req.refused_bound,
    };
    let reply = item_call(executor, &item_keys, req.code, args.item_side("checkout")).await?;
    outcome(&SALE_ITEM.lua, &reply)?;
    let reply = user_call(executor, &user_keys, req.code, args.user_side("issue", "")).await?;
    let decided = outcome(&SALE_USER.lua, &reply);
    if decided.is_err()
        && let Err(e) = item_call(executor, &item_keys, req.code, args.item_side("void")).await
    {
        tracing::debug!(error = %e, "a code the user's part refused stays issued, without a ticket");
    }
    decided
}

/// What the item's part says of a code; final once `Spent` or `Void`.
enum Verdict {
    /// Spent by this call: the purchase happened now.
    SpentNow(i64),
    /// Spent before (this code's own earlier call, or a concurrent one).
    Spent,
    /// Never spendable again, with the refusal that made it so.
    Void(String),
}

impl Verdict {
    fn word(&self) -> String {
        match self {
            Verdict::SpentNow(_) | Verdict::Spent => "spent".to_owned(),
            Verdict::Void(reason) => format!("void:{reason}"),
        }
    }
}

fn verdict(reply: &[Value]) -> Result<Verdict, SaleError> {
    let script = &SALE_ITEM.lua;
    let word = reply_str(script, reply, 0)?;
    let verdict = match word.as_str() {
        "OK" => Verdict::SpentNow(reply_i64(script, reply, 1)?),
        "SPENT" => Verdict::Spent,
        "VOID" => Verdict::Void(reply_str(script, reply, 1)?),
        // OUTBOX_FULL, or garbage: decoded (and counted) as a refusal.
        _ => return outcome(script, reply).map(|()| Verdict::Spent),
    };
    crate::telemetry::script_outcome(
        script.name(),
        match verdict {
            Verdict::SpentNow(_) => "OK",
            Verdict::Spent => "SPENT",
            Verdict::Void(_) => "VOID",
        },
    );
    Ok(verdict)
}

/// The refusal a void code answers with.
fn refusal(reason: &str) -> SaleError {
    match reason {
        "ITEM_SOLD" => SaleError::ItemSold,
        "SALE_OVER" => SaleError::SaleOver,
        "CODE_NOT_FOUND" => SaleError::CodeNotFound,
        _ => SaleError::CodeExpired,
    }
}

/// Purchase of a split sale: reserve a unit of the user's limit (user's
/// part), spend the code (item's part), settle the reservation with the item
/// part's verdict (user's part). A 503 between the steps leaves a
/// reservation, which the sweeper settles the same way.
pub async fn purchase(
    executor: &Executor,
    keys: &Keyspace,
    code: &CheckoutCode,
    active: SaleWindow,
    now_ms: i64,
    split: u32,
) -> Result<Purchased, SaleError> {
    let (u, i) = code.parts();
    if u >= split || i >= split {
        return Err(SaleError::CodeNotFound);
    }
    let user_keys = SaleKeys::of_part(keys, code.sale_id(), u);
    let item_keys = SaleKeys::of_part(keys, code.sale_id(), i);
    let args = Args::of_code(now_ms, active.sale_id, code);

    let reply = user_call(executor, &user_keys, code, args.user_side("reserve", "")).await?;
    let script = &SALE_USER.lua;
    if reply_str(script, &reply, 0)? != "RESERVED" {
        outcome(script, &reply)?;
        return Err(SaleError::Script(script.unexpected("OK without a reservation")));
    }
    crate::telemetry::script_outcome(script.name(), "RESERVED");
    let purchased_before = reply_i64(script, &reply, 2)?;

    let reply = item_call(executor, &item_keys, code, args.item_side("spend")).await?;
    let verdict = verdict(&reply)?;
    let settled = user_call(executor, &user_keys, code, args.user_side("settle", &verdict.word())).await;
    let user_purchases = match settled.as_deref() {
        Ok(reply) => Some(reply_i64(script, reply, 1)?),
        Err(e) => {
            tracing::warn!(error = %e, "a split purchase's reservation waits for the sweeper");
            None
        }
    };
    match verdict {
        // The item's part decided: the purchase stands whatever the settle
        // call's fate (the sweeper confirms a reservation it left).
        Verdict::SpentNow(item_id) => Ok(Purchased {
            item_id,
            user_purchases: user_purchases.unwrap_or(purchased_before + 1),
        }),
        Verdict::Spent => Err(SaleError::CodeUsed),
        Verdict::Void(reason) => Err(refusal(&reason)),
    }
}

/// Resolves one reservation left behind on `user_part` of `sale_id`: asks
/// the item's part to void the code unless it was spent (so it can never be
/// spent later), then settles the reservation with that verdict. Returns
/// whether the code had been spent.
pub async fn resolve(
    executor: &Executor,
    keys: &Keyspace,
    sale_id: u64,
    user_part: u32,
    code: &CheckoutCode,
    now_ms: i64,
) -> Result<bool, SaleError> {
    let (_, i) = code.parts();
    let user_keys = SaleKeys::of_part(keys, sale_id, user_part);
    let item_keys = SaleKeys::of_part(keys, sale_id, i);
    let args = Args::of_code(now_ms, sale_id, code);
    let reply = item_call(executor, &item_keys, code, args.item_side("void")).await?;
    let verdict = verdict(&reply)?;
    user_call(executor, &user_keys, code, args.user_side("settle", &verdict.word())).await?;
    Ok(!matches!(verdict, Verdict::Void(_)))
}
