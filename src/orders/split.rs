//! A product split over several buckets, each on its own hash slot
//! (`STAMPEDE_STOCK_SPLIT`; docs/orders.md, "A product split over several
//! slots"), so one hot product's orders spread over several primaries of a
//! cluster. Bucket b of product p is on shard `p + b`; bucket 0 is the
//! product's own shard and keys (its head: the catalogue, `stock_total`, the
//! split, and the reserve every bucket refills from). A buyer's orders all go
//! to one bucket (a stable hash of the buyer id), which keeps the buyer's
//! count, so the per-buyer limit stays a one-slot check.
//!
//! An order is one call on its bucket, as on one slot. A bucket that cannot
//! serve it takes nothing and says what it lacks; the engine then moves
//! stock to it, the giver first (the reserve, then the other buckets): give
//! (giver's slot), take (taker's slot), drop (giver's slot), each one
//! idempotent call keyed by a transfer id (`lua/stock_move.lua`), and asks
//! again. `OUT_OF_STOCK` is answered only once a rebalance found nothing to
//! move and the whole product, read at one instant, has less available than
//! the order asks (stock in transit counts: it is on its way to a bucket). A crash between the
//! steps leaves the stock in transit, counted on the giver's side, until the
//! sweeper (`sweeper`) finishes the transfer. So
//! `Σ available + Σ reserved + Σ sold + reserve + in transit = stock_total`
//! holds at every instant, and [`read`] sums it across the slots exactly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fred::interfaces::{HashesInterface, SortedSetsInterface};
use futures_util::future::join_all;
use rand::RngExt;

use super::domain::{BuyerId, OrderId, ProductId};
use super::limits::{
    PRODUCT_SPLITS_CACHED_MAX, STOCK_READ_TRIES_MAX, STOCK_REFILL_GATES, STOCK_REFILL_ROUNDS_MAX, STOCK_TRANSIT_PAUSE,
    STOCK_TRANSIT_PER_PART_MAX,
};
use super::lua::{self, CreateRequest, Created, Decided, GiveLimits, Given, MoveStep, Source, Stock, Taken};
use super::{Orders, OrdersError, metrics};
use crate::context::Context;
use crate::redis::keyspace::{Keyspace, Shard, stable_hash};
use crate::redis::lua::ScriptError;
use crate::server::http::IdempotencyKey;

/// The buyer's bucket: a stable hash of the id, so all of a buyer's orders
/// of a product, and its count, are on one slot.
pub fn bucket_of(buyer: &BuyerId, split: u32) -> u32 {
    (stable_hash(buyer.as_str()) % u64::from(split.max(1))) as u32
}

/// The shard of bucket `bucket` of `product`.
pub fn bucket_shard(keys: &Keyspace, product: ProductId, bucket: u32) -> Shard {
    keys.shard_of_part(product.get(), bucket)
}

fn redis_error(e: fred::error::Error) -> OrdersError {
    OrdersError::Script(ScriptError::Redis(e))
}

/// The split of each product this engine has seen. A product's split is
/// recorded in its head when it is seeded and never changes, so what is
/// remembered stays true; the memory is bounded and cleared when full.
#[derive(Default)]
pub struct Splits {
    known: Mutex<HashMap<u64, u32>>,
}

impl Splits {
    fn cached(&self, product: ProductId) -> Option<u32> {
        self.known.lock().ok()?.get(&product.get()).copied()
    }

    pub fn remember(&self, product: ProductId, split: u32) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= PRODUCT_SPLITS_CACHED_MAX {
                known.clear();
            }
            known.insert(product.get(), split);
        }
    }

    /// The product's split, read from its head the first time; `None` while
    /// the product is not seeded in Redis.
    pub async fn of(&self, ctx: &Context, product: ProductId) -> Result<Option<u32>, OrdersError> {
        if let Some(split) = self.cached(product) {
            return Ok(Some(split));
        }
        let head: Vec<Option<String>> = ctx
            .redis
            .hmget(lua::product_key(&ctx.keys, product), vec!["stock_total", "split"])
            .await
            .map_err(redis_error)?;
        if head.first().cloned().flatten().is_none() {
            return Ok(None);
        }
        let split = head
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(1);
        self.remember(product, split);
        Ok(Some(split))
    }
}

/// A new order, checked.
pub struct NewOrder<'a> {
    pub product: ProductId,
    pub quantity: i64,
    pub buyer: &'a BuyerId,
    pub hold_secs: Option<i64>,
    pub key: Option<&'a IdempotencyKey>,
    pub now_ms: i64,
}

/// What this engine last learnt refilling one bucket of one product.
#[derive(Debug, Default, Clone, Copy)]
struct Gate {
    /// The (product, bucket) this is about: gates are shared by hash.
    of: Option<(u64, u32)>,
    /// When a refill of the bucket last moved stock to it.
    refilled_at: Option<Instant>,
    /// The last whole-product read after a refill found nothing to move:
    /// when it started, and what the product had available then.
    sold_down_to: Option<(Instant, i64)>,
}

/// One refill per bucket at a time in this engine: the orders of a bucket
/// that find it short pass its gate one by one, each asking again if a
/// refill came since it was short, refilling otherwise, instead of each
/// draining the givers at once. A fixed set of gates shared by hash, so it
/// stays bounded; two buckets sharing a gate only wait for each other.
pub struct Refills {
    gates: Box<[tokio::sync::Mutex<Gate>]>,
    /// Orders waiting at each gate, so a refill brings enough for them too.
    waiting: Box<[AtomicUsize]>,
}

impl Default for Refills {
    fn default() -> Self {
        Self {
            gates: (0..STOCK_REFILL_GATES)
                .map(|_| tokio::sync::Mutex::new(Gate::default()))
                .collect(),
            waiting: (0..STOCK_REFILL_GATES).map(|_| AtomicUsize::new(0)).collect(),
        }
    }
}

impl Refills {
    fn index(&self, product: ProductId, bucket: u32) -> usize {
        let at = product
            .get()
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(bucket));
        (at % self.gates.len() as u64) as usize
    }

    /// Waits for the bucket's gate; the guard says it is this bucket's.
    async fn enter(&self, product: ProductId, bucket: u32) -> tokio::sync::MutexGuard<'_, Gate> {
        let i = self.index(product, bucket);
        self.waiting[i].fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gates[i].lock().await;
        self.waiting[i].fetch_sub(1, Ordering::SeqCst);
        if gate.of != Some((product.get(), bucket)) {
            *gate = Gate {
                of: Some((product.get(), bucket)),
                ..Gate::default()
            };
        }
        gate
    }

    /// Orders waiting at the bucket's gate now.
    fn waiting(&self, product: ProductId, bucket: u32) -> i64 {
        self.waiting[self.index(product, bucket)].load(Ordering::SeqCst) as i64
    }
}

/// Decides an order: one call on the product's slot, or, for a split
/// product, on the buyer's bucket, refilled from the reserve and the other
/// buckets while it is short. `OUT_OF_STOCK` is the bucket's answer once a
/// refill found nothing to move and a read of the whole product (one
/// instant, across its slots) showed less available than the order asks:
/// stock on its way between buckets is never taken for gone.
pub async fn order(feature: &Orders, new: NewOrder<'_>) -> Result<Decided, OrdersError> {
    let ctx = &*feature.ctx;
    // A product not seeded yet is refused by the script on the bucket this
    // engine would use (PRODUCT_NOT_FOUND, recorded under the key).
    let split = feature
        .splits
        .of(ctx, new.product)
        .await?
        .unwrap_or(feature.settings.stock_split);
    let bucket = (split > 1).then(|| bucket_of(new.buyer, split));
    let shard = bucket_shard(&ctx.keys, new.product, bucket.unwrap_or(0));
    let order = OrderId::generate(shard, &ctx.keys, ctx.clock.now_ms());
    let request = |refill: bool| CreateRequest {
        product: new.product,
        order: &order,
        bucket,
        refill,
        refill_max: feature.settings.refill_max,
        quantity: new.quantity,
        buyer: new.buyer,
        hold_secs: new.hold_secs,
        key: new.key,
        now_ms: new.now_ms,
        idempotency_ttl_ms: feature.settings.idempotency_ttl_ms,
    };
    let Some(taker) = bucket else {
        return decided(lua::create(&ctx.executor, &ctx.keys, request(false)).await?);
    };
    let ask = |refill: bool| lua::create(&ctx.executor, &ctx.keys, request(refill));
    let mut lacking = match ask(true).await? {
        Created::Decided(decided) => return Ok(decided),
        Created::Short(lacking) => lacking,
    };
    let short_at = Instant::now();
    // The orders that find the bucket short go through its gate one at a
    // time, in the order they came: what a refill brings serves them in
    // that order, and only orders arriving meanwhile compete with them.
    let mut gate = feature.refills.enter(new.product, taker).await;
    // A read of the whole product after this order asked found it short.
    if gate
        .sold_down_to
        .is_some_and(|(at, available)| at > short_at && available < new.quantity)
    {
        drop(gate);
        return decided(ask(false).await?);
    }
    // Another order refilled the bucket while this one waited: ask again.
    if gate.refilled_at.is_some_and(|at| at > short_at) {
        match ask(true).await? {
            Created::Decided(decided) => return Ok(decided),
            Created::Short(now_lacking) => lacking = now_lacking,
        }
    }
    // Refill the bucket, for this order and those waiting behind it.
    for _ in 0..STOCK_REFILL_ROUNDS_MAX {
        // What the orders waiting lack counts as beyond what this one
        // lacks: the refill cap holds it.
        let waiting = feature.refills.waiting(new.product, taker) * new.quantity;
        let need = lacking + waiting.min(feature.settings.refill_max);
        let moved = rebalance(feature, new.product, split, taker, need, new.now_ms)
            .await
            .map_err(|e| unknown_order(e, &order))?;
        if moved > 0 {
            gate.refilled_at = Some(Instant::now());
        } else {
            let read_at = Instant::now();
            let whole = read(&ctx.redis, &ctx.keys, new.product)
                .await
                .map_err(|e| unknown_order(e, &order))?;
            let (available, in_transit) = whole.map_or((0, 0), |read| {
                (read.stock.available, read.parts.map_or(0, |p| p.in_transit))
            });
            gate.sold_down_to = Some((read_at, available));
            if available < new.quantity {
                drop(gate);
                return decided(ask(false).await?);
            }
            if in_transit > 0 {
                // It is on its way to a bucket, where the next round finds it.
                tokio::time::sleep(STOCK_TRANSIT_PAUSE).await;
            }
        }
        match ask(true).await? {
            Created::Decided(decided) => return Ok(decided),
            Created::Short(now_lacking) => lacking = now_lacking,
        }
    }
    // Stock kept moving, and orders arriving meanwhile kept taking what came
    // first.
    Err(OrdersError::StockMoving)
}

fn decided(created: Created) -> Result<Decided, OrdersError> {
    match created {
        Created::Decided(decided) => Ok(decided),
        Created::Short(_) => Err(OrdersError::Script(
            lua::ORDER_CREATE.lua.unexpected("REFILL without being asked to refill"),
        )),
    }
}

/// A refill step (or the read after it) that failed in Redis: the order
/// itself was not placed (its call answered REFILL and was not sent again),
/// but the client is told as for any order whose call failed, with the id:
/// `GET /orders/{id}` says 404.
fn unknown_order(e: OrdersError, order: &OrderId) -> OrdersError {
    match e {
        OrdersError::Script(ScriptError::Redis(source)) => OrdersError::OutcomeUnknown {
            order_id: order.as_str().to_owned(),
            source,
        },
        other => other,
    }
}

/// Moves at least `lacking` (if there is that much) to bucket `taker`: from
/// the reserve first (unless the taker is bucket 0, which draws on it in its
/// own call), then from the other buckets in turn. Returns what it moved.
async fn rebalance(
    feature: &Orders,
    product: ProductId,
    split: u32,
    taker: u32,
    lacking: i64,
    now_ms: i64,
) -> Result<i64, OrdersError> {
    let mut givers = Vec::with_capacity(split as usize);
    if taker != 0 {
        givers.push((0, Source::Reserve));
    }
    givers.extend((1..split).map(|i| ((taker + i) % split, Source::Bucket)));
    let mut moved = 0;
    for (giver, source) in givers {
        if moved >= lacking {
            break;
        }
        moved += transfer(feature, product, giver, source, taker, lacking - moved, now_ms).await?;
    }
    Ok(moved)
}

/// One transfer, giver first: give, take, drop. Returns what it moved (0:
/// the giver had nothing). A failed give or take leaves the stock where the
/// step left it, in transit at worst, for the sweeper; a failed drop only
/// leaves the record, which the sweeper removes.
async fn transfer(
    feature: &Orders,
    product: ProductId,
    giver: u32,
    source: Source,
    taker: u32,
    need: i64,
    now_ms: i64,
) -> Result<i64, OrdersError> {
    let ctx = &*feature.ctx;
    let id = format!("{:016x}", rand::rng().random::<u64>());
    let at_giver = MoveStep {
        product,
        shard: bucket_shard(&ctx.keys, product, giver),
        transfer: &id,
        taker,
        now_ms,
    };
    let limits = GiveLimits {
        refill_max: feature.settings.refill_max,
        transit_max: STOCK_TRANSIT_PER_PART_MAX,
    };
    let given = match lua::give(&ctx.executor, &ctx.keys, &at_giver, need, source, limits).await? {
        Given::Given(quantity) => quantity,
        Given::Empty => return Ok(0),
        Given::Busy => return Err(OrdersError::StockMoving),
    };
    let at_taker = MoveStep {
        shard: bucket_shard(&ctx.keys, product, taker),
        ..at_giver
    };
    match lua::take(&ctx.executor, &ctx.keys, &at_taker, given, now_ms).await? {
        Taken::Taken => {}
        refused => {
            tracing::warn!(
                product = product.get(),
                taker,
                transfer = id,
                ?refused,
                "transfer left in transit"
            );
            return Err(OrdersError::StockMoving);
        }
    }
    if let Err(e) = lua::drop_transit(&ctx.executor, &ctx.keys, &at_giver).await {
        tracing::warn!(error = %e, transfer = id, "a taken transfer's record waits for the sweeper");
    }
    metrics::transfer_finished("request");
    Ok(given)
}

/// Gives every bucket but the head its share of a new split product's stock
/// (a K-th, one transfer from the reserve each), so that at the opening no
/// bucket needs a refill; the head's share stays in the reserve, which
/// bucket 0 draws on within its own order calls.
pub async fn distribute(
    feature: &Orders,
    product: ProductId,
    split: u32,
    stock: i64,
    now_ms: i64,
) -> Result<(), OrdersError> {
    let share = stock / i64::from(split.max(1));
    if share == 0 {
        return Ok(());
    }
    let given =
        join_all((1..split).map(|bucket| transfer(feature, product, 0, Source::Reserve, bucket, share, now_ms))).await;
    given.into_iter().collect::<Result<Vec<i64>, _>>()?;
    Ok(())
}

/// A transfer in transit, as the shard's transits zset names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InTransit {
    pub product: ProductId,
    pub transfer: String,
    pub taker: u32,
    pub quantity: i64,
    pub created_ms: i64,
}

impl InTransit {
    /// `product␟tid␟taker␟quantity␟created_ms` (lua/stock_move.lua).
    pub fn parse(member: &str) -> Option<Self> {
        let mut f = member.split('\u{1f}');
        let product = ProductId::parse(f.next()).ok()?;
        let transfer = f.next()?.to_owned();
        let taker = f.next()?.parse().ok()?;
        let quantity = f.next()?.parse().ok()?;
        let created_ms = f.next()?.parse().ok()?;
        (f.next().is_none() && !transfer.is_empty()).then_some(Self {
            product,
            transfer,
            taker,
            quantity,
            created_ms,
        })
    }
}

/// Finishes a transfer found in transit on the giver's `shard` (the
/// sweeper's step): take, then drop. Returns false when the taker refused
/// it (left in transit, counted, for an operator).
pub async fn finish(feature: &Orders, shard: Shard, t: &InTransit, now_ms: i64) -> Result<bool, OrdersError> {
    let ctx = &*feature.ctx;
    let at_taker = MoveStep {
        product: t.product,
        shard: bucket_shard(&ctx.keys, t.product, t.taker),
        transfer: &t.transfer,
        taker: t.taker,
        now_ms,
    };
    match lua::take(&ctx.executor, &ctx.keys, &at_taker, t.quantity, t.created_ms).await? {
        Taken::Taken => {}
        refused => {
            tracing::error!(
                product = t.product.get(),
                transfer = t.transfer,
                ?refused,
                "a transfer cannot be finished; its stock stays counted in transit"
            );
            metrics::transfer_stuck();
            return Ok(false);
        }
    }
    lua::drop_transit(&ctx.executor, &ctx.keys, &MoveStep { shard, ..at_taker }).await?;
    metrics::transfer_finished("sweeper");
    Ok(true)
}

/// One bucket of a split product, as read.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct BucketStock {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// Where a split product's stock is.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Parts {
    /// Not yet in any bucket (on bucket 0's slot).
    pub reserve: i64,
    /// Given by the reserve or a bucket, not yet taken by the bucket it goes
    /// to (a refill under way, or one a crash cut, which the sweeper ends).
    pub in_transit: i64,
    /// Bucket by bucket, in bucket order.
    pub buckets: Vec<BucketStock>,
}

/// A product as read from Redis.
#[derive(Debug, Clone)]
pub struct ProductRead {
    pub name: String,
    pub price_cents: i64,
    pub merchant_id: i64,
    pub max_per_buyer: i64,
    /// Totals; for a split product `available` counts the reserve and the
    /// stock in transit, so `available + reserved + sold = stock_total`.
    pub stock: Stock,
    /// For a split product.
    pub parts: Option<Parts>,
}

const HEAD: [&str; 11] = [
    "name",
    "price_cents",
    "merchant_id",
    "max_per_buyer",
    "stock_total",
    "available",
    "reserved",
    "sold",
    "split",
    "reserve",
    "moves",
];
const PART: [&str; 6] = ["stock_total", "available", "reserved", "sold", "reserve", "moves"];

fn int(fields: &[Option<String>], i: usize) -> Option<i64> {
    fields.get(i).cloned().flatten().and_then(|v| v.parse().ok())
}

/// Reads a product's live stock; `None` when it is not seeded in Redis. A
/// product on one slot is one HMGET. A split one is read part by part
/// (counters and transit records), then each part's `moves` again: the read
/// counts only if no stock crossed slots meanwhile (orders and restocks
/// move stock within a slot only, and every read of a part is atomic), so
/// its sum is the one of an instant. A read that keeps seeing stock move
/// answers `StockMoving` after `STOCK_READ_TRIES_MAX` tries. `redis` is
/// any client of the engine's Redis (the engine's pool, or a test's own).
pub async fn read<R>(redis: &R, keys: &Keyspace, product: ProductId) -> Result<Option<ProductRead>, OrdersError>
where
    R: HashesInterface + SortedSetsInterface + Sync,
{
    let head: Vec<Option<String>> = redis
        .hmget(lua::product_key(keys, product), HEAD.to_vec())
        .await
        .map_err(redis_error)?;
    let (Some(name), Some(price_cents), Some(merchant_id), Some(max_per_buyer)) = (
        head.first().cloned().flatten(),
        int(&head, 1),
        int(&head, 2),
        int(&head, 3),
    ) else {
        return Ok(None);
    };
    let split = int(&head, 8).unwrap_or(1).max(1) as u32;
    let mut read = ProductRead {
        name,
        price_cents,
        merchant_id,
        max_per_buyer,
        stock: Stock {
            stock_total: int(&head, 4).unwrap_or(0),
            available: int(&head, 5).unwrap_or(0),
            reserved: int(&head, 6).unwrap_or(0),
            sold: int(&head, 7).unwrap_or(0),
        },
        parts: None,
    };
    if split == 1 {
        return Ok(Some(read));
    }
    for _ in 0..STOCK_READ_TRIES_MAX {
        if let Some((stock, parts)) = read_parts(redis, keys, product, split).await? {
            read.stock = stock;
            read.parts = Some(parts);
            return Ok(Some(read));
        }
    }
    Err(OrdersError::StockMoving)
}

/// One part as read: its counters, `moves`, and its transit records.
struct PartRead {
    fields: Vec<Option<String>>,
    transit: HashMap<String, String>,
}

/// One try at reading every part; `None` when stock crossed slots during it.
async fn read_parts<R>(
    redis: &R,
    keys: &Keyspace,
    product: ProductId,
    split: u32,
) -> Result<Option<(Stock, Parts)>, OrdersError>
where
    R: HashesInterface + SortedSetsInterface + Sync,
{
    let shards: Vec<Shard> = (0..split).map(|b| bucket_shard(keys, product, b)).collect();
    let reads = join_all(shards.iter().map(|&shard| async move {
        let fields: Vec<Option<String>> = redis
            .hmget(lua::bucket_key(keys, shard, product), PART.to_vec())
            .await?;
        let transit: HashMap<String, String> = redis.hgetall(lua::transit_key(keys, shard, product)).await?;
        Ok::<_, fred::error::Error>(PartRead { fields, transit })
    }))
    .await;
    let parts: Vec<PartRead> = reads.into_iter().collect::<Result<_, _>>().map_err(redis_error)?;
    // Each record still in a giver's transit hash counts until its taker
    // has received it.
    let records: Vec<(u32, String, i64)> = parts
        .iter()
        .flat_map(|p| p.transit.iter())
        .filter_map(|(id, record)| {
            let mut f = record.split('\u{1f}');
            let taker: u32 = f.next()?.parse().ok()?;
            let quantity: i64 = f.next()?.parse().ok()?;
            (taker < split).then(|| (taker, id.clone(), quantity))
        })
        .collect();
    let received = join_all(records.iter().map(|(taker, id, _)| {
        redis.zscore::<Option<f64>, _, _>(lua::receipts_key(keys, shards[*taker as usize], product), id.as_str())
    }))
    .await;
    let mut in_transit = 0;
    for ((_, _, quantity), received) in records.iter().zip(received) {
        if received.map_err(redis_error)?.is_none() {
            in_transit += quantity;
        }
    }
    let moves_again = join_all(
        shards
            .iter()
            .map(|&shard| redis.hget::<Option<i64>, _, _>(lua::bucket_key(keys, shard, product), "moves")),
    )
    .await;
    for (part, again) in parts.iter().zip(moves_again) {
        if int(&part.fields, 5) != again.map_err(redis_error)? {
            return Ok(None);
        }
    }
    let buckets: Vec<BucketStock> = parts
        .iter()
        .map(|p| BucketStock {
            available: int(&p.fields, 1).unwrap_or(0),
            reserved: int(&p.fields, 2).unwrap_or(0),
            sold: int(&p.fields, 3).unwrap_or(0),
        })
        .collect();
    let reserve = int(&parts[0].fields, 4).unwrap_or(0);
    let stock = Stock {
        stock_total: int(&parts[0].fields, 0).unwrap_or(0),
        available: buckets.iter().map(|b| b.available).sum::<i64>() + reserve + in_transit,
        reserved: buckets.iter().map(|b| b.reserved).sum(),
        sold: buckets.iter().map(|b| b.sold).sum(),
    };
    Ok(Some((
        stock,
        Parts {
            reserve,
            in_transit,
            buckets,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buyers_spread_over_the_buckets_and_stay_put() {
        let buyer = |s: &str| BuyerId::parse(s.to_owned()).expect("buyer");
        assert_eq!(bucket_of(&buyer("alice"), 3), bucket_of(&buyer("alice"), 3));
        assert_eq!(bucket_of(&buyer("alice"), 1), 0);
        let used: std::collections::HashSet<u32> = (0..100).map(|i| bucket_of(&buyer(&format!("b{i}")), 3)).collect();
        assert_eq!(used.len(), 3);
        let keys = Keyspace::numbered("p", 8);
        let product = ProductId::new(7).expect("id");
        let shards: Vec<u64> = (0..3).map(|b| bucket_shard(&keys, product, b).index()).collect();
        assert_eq!(shards, [7, 0, 1]);
        assert_eq!(bucket_shard(&keys, product, 0), product.shard(&keys));
    }

    #[test]
    fn transit_members_round_trip() {
        let parsed = InTransit::parse("42\u{1f}00ff\u{1f}2\u{1f}5\u{1f}1700000000000").expect("member");
        assert_eq!(
            parsed,
            InTransit {
                product: ProductId::new(42).expect("id"),
                transfer: "00ff".into(),
                taker: 2,
                quantity: 5,
                created_ms: 1_700_000_000_000,
            }
        );
        for garbage in [
            "",
            "42",
            "42\u{1f}\u{1f}2\u{1f}5\u{1f}1",
            "x\u{1f}a\u{1f}2\u{1f}5\u{1f}1",
            "42\u{1f}a\u{1f}2\u{1f}5\u{1f}1\u{1f}9",
        ] {
            assert!(InTransit::parse(garbage).is_none(), "{garbage:?}");
        }
    }
}
