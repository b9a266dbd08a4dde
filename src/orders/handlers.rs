//! The orders' routes. Every state change is one script call (see
//! `lua`); reads go to Redis, and to Postgres for old orders.

use fred::interfaces::HashesInterface;
use futures_util::future::join_all;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::domain::{self, BuyerId, Field, NewProduct, OrderId, ProductId};
use super::limits::PRODUCT_STOCK_MAX;
use super::lua::{self, Action, Decided, OrderRecord, Stock, StockRequest, UpdateRequest};
use super::split::{self, NewOrder, Parts, ProductRead};
use super::{Orders, OrdersError};
use crate::redis::lua::ScriptError;
use crate::server::RequestError;
use crate::server::access::Caller;
use crate::server::error::{ErrorBody, error_response};
use crate::server::http::{HttpResponse, IdempotencyKey, json, read_json, rfc3339};

/// The orders' part of `GET /openapi.json`.
#[derive(OpenApi)]
#[openapi(
    paths(
        create_order,
        get_order,
        confirm_order,
        cancel_order,
        create_product,
        get_product,
        restock,
        super::reconcile::reconcile
    ),
    components(schemas(ErrorBody))
)]
pub struct OrdersApi;

/// The header that marks a replayed answer.
const REPLAYED: &str = "idempotent-replayed";

/// An order, as every order route answers it.
#[derive(Serialize, ToSchema)]
#[schema(as = Order)]
struct OrderView<'a> {
    /// A UUID.
    id: &'a str,
    product_id: u64,
    quantity: i64,
    buyer_id: &'a str,
    /// `completed`, `reserved`, `cancelled` or `expired`.
    status: &'a str,
    total_amount_cents: i64,
    created_at: String,
    /// For a hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

fn order_json(status: StatusCode, order: &OrderRecord) -> HttpResponse {
    json(
        status,
        &OrderView {
            id: &order.id,
            product_id: order.product_id,
            quantity: order.quantity,
            buyer_id: &order.buyer_id,
            status: &order.status,
            total_amount_cents: order.total_amount_cents,
            created_at: rfc3339(order.created_ms),
            expires_at: order.expires_ms.map(rfc3339),
        },
    )
}

/// The answer of a decided request. A replay answers exactly as the first
/// time (status and body), plus `Idempotent-Replayed: true`.
fn answer(decided: Decided, route: &'static str) -> Result<HttpResponse, OrdersError> {
    if !decided.replayed {
        return decided.result.map(|order| order_json(StatusCode::OK, &order));
    }
    super::metrics::idempotent_replay(route);
    let mut response = match decided.result {
        Ok(order) => order_json(StatusCode::OK, &order),
        Err(refusal) => error_response(&refusal),
    };
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// `POST /orders`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    product_id: i64,
    /// 1 to the named bound (`ORDER_QUANTITY_MAX`).
    quantity: i64,
    /// 1-64 bytes, no control characters.
    buyer_id: String,
    /// 1-3600: a hold (`reserved` until confirmed, cancelled or expired).
    hold_secs: Option<i64>,
}

#[utoipa::path(post, path = "/orders", tag = "orders", summary = "Order a product: completed at once, or held with hold_secs",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII; the first answer is replayed")),
    request_body = OrderBody,
    responses(
        (status = 200, description = "the order (`Idempotent-Replayed: true` on a replay)", body = OrderView),
    ))]
pub async fn create_order(feature: &Orders, req: Request<Incoming>) -> Result<HttpResponse, OrdersError> {
    let state = &*feature.ctx;
    let key = IdempotencyKey::from_headers(req.headers())?;
    let body: OrderBody = read_json(req).await?;
    let product = ProductId::new(body.product_id)?;
    let quantity = domain::quantity(body.quantity)?;
    let buyer = BuyerId::parse(body.buyer_id)?;
    let hold_secs = domain::hold_secs(body.hold_secs)?;
    let decided = split::order(
        feature,
        NewOrder {
            product,
            quantity,
            buyer: &buyer,
            hold_secs,
            key: key.as_ref(),
            now_ms: state.clock.now_ms(),
        },
    )
    .await?;
    answer(decided, "order_create")
}

#[utoipa::path(post, path = "/orders/{id}/confirm", tag = "orders", summary = "Confirm a hold: it becomes completed",
    params(("id" = String, Path, description = "the order's UUID"),
           ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII")),
    responses(
        (status = 200, description = "the order, completed", body = OrderView),
    ))]
pub async fn confirm_order(
    feature: &Orders,
    req: Request<Incoming>,
    raw_id: Option<&str>,
) -> Result<HttpResponse, OrdersError> {
    update_order(feature, req, raw_id, Action::Confirm).await
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", summary = "Cancel a hold: its stock returns",
    params(("id" = String, Path, description = "the order's UUID"),
           ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII")),
    responses(
        (status = 200, description = "the order, cancelled (or expired, unchanged)", body = OrderView),
    ))]
pub async fn cancel_order(
    feature: &Orders,
    req: Request<Incoming>,
    raw_id: Option<&str>,
) -> Result<HttpResponse, OrdersError> {
    update_order(feature, req, raw_id, Action::Cancel).await
}

/// `POST /orders/{id}/confirm` and `/cancel`.
async fn update_order(
    feature: &Orders,
    req: Request<Incoming>,
    raw_id: Option<&str>,
    action: Action,
) -> Result<HttpResponse, OrdersError> {
    let state = &*feature.ctx;
    let order = OrderId::parse(raw_id)?;
    let key = IdempotencyKey::from_headers(req.headers())?;
    // The product never changes for an order, so reading it before the
    // script is safe; the script checks it again.
    let product: Option<u64> = state
        .redis
        .hget(lua::order_key(&state.keys, &order), "product")
        .await
        .map_err(|e| OrdersError::Script(ScriptError::Redis(e)))?;
    let Some(product) = product else {
        return settled_in_postgres(feature, &order, action).await;
    };
    let decided = lua::update(
        &state.executor,
        &state.keys,
        UpdateRequest {
            order: &order,
            product: ProductId::new(product as i64)?,
            action,
            key: key.as_ref(),
            now_ms: state.clock.now_ms(),
            idempotency_ttl_ms: feature.settings.idempotency_ttl_ms,
        },
    )
    .await?;
    answer(
        decided,
        match action {
            Action::Confirm => "order_confirm",
            _ => "order_cancel",
        },
    )
}

/// Confirm or cancel of an order whose Redis record is past its retention:
/// it is settled (holds never outlive the retention), so the answer follows
/// from its final status.
async fn settled_in_postgres(feature: &Orders, order: &OrderId, action: Action) -> Result<HttpResponse, OrdersError> {
    let record = order_from_postgres(feature, order)
        .await?
        .ok_or(OrdersError::OrderNotFound)?;
    match (action, record.status.as_str()) {
        (Action::Confirm, "completed") | (Action::Cancel, "cancelled" | "expired") => {
            Ok(order_json(StatusCode::OK, &record))
        }
        (Action::Confirm, "expired") => Err(OrdersError::OrderExpired),
        (Action::Confirm, "cancelled") => Err(OrdersError::OrderCancelled),
        (Action::Cancel, "completed") => Err(OrdersError::OrderCompleted),
        // A reserved order past retention cannot happen: its hold expired
        // long before. Say so rather than act on it.
        _ => Err(OrdersError::OrderNotFound),
    }
}

/// An `orders` row: id, product, quantity, buyer, status, total, created
/// and expiry (ms).
type OrderRow = (String, i64, i64, String, String, i64, i64, Option<i64>);

async fn order_from_postgres(feature: &Orders, order: &OrderId) -> Result<Option<OrderRecord>, OrdersError> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT id::text, product_id, quantity::bigint, buyer_id, status, total_amount_cents,
                (extract(epoch FROM created_at) * 1000)::bigint,
                (extract(epoch FROM expires_at) * 1000)::bigint
         FROM orders WHERE id = $1::uuid",
    )
    .bind(order.as_str())
    .fetch_optional(&feature.ctx.postgres)
    .await?;
    Ok(row.map(
        |(id, product, quantity, buyer_id, status, total, created_ms, expires_ms)| OrderRecord {
            id,
            product_id: product as u64,
            quantity,
            buyer_id,
            status,
            total_amount_cents: total,
            created_ms,
            expires_ms,
        },
    ))
}

/// `GET /orders/{id}`: Redis first (an order is there from the moment its
/// 200 is sent), Postgres for orders past their Redis retention. A player
/// token reads only its player's orders: the router checked the token, the
/// buyer is known only here.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", summary = "An order with its current status",
    params(("id" = String, Path, description = "the order's UUID")),
    responses(
        (status = 200, description = "the order", body = OrderView),
    ))]
pub async fn get_order(
    feature: &Orders,
    req: Request<Incoming>,
    raw_id: Option<&str>,
) -> Result<HttpResponse, OrdersError> {
    let state = &*feature.ctx;
    let player = req
        .extensions()
        .get::<Caller>()
        .and_then(Caller::player)
        .map(str::to_owned);
    let mine = |buyer: &str| match &player {
        Some(player) if player != buyer => Err(OrdersError::Request(RequestError::Forbidden)),
        _ => Ok(()),
    };
    let order = OrderId::parse(raw_id)?;
    let fields: Vec<Option<String>> = state
        .redis
        .hmget(
            lua::order_key(&state.keys, &order),
            vec!["product", "qty", "buyer", "status", "total", "created", "expires"],
        )
        .await
        .map_err(|e| OrdersError::Script(ScriptError::Redis(e)))?;
    let int = |i: usize| fields.get(i).cloned().flatten().and_then(|v| v.parse::<i64>().ok());
    let text = |i: usize| fields.get(i).cloned().flatten();
    if let (Some(product), Some(quantity), Some(buyer_id), Some(status), Some(total), Some(created_ms)) =
        (int(0), int(1), text(2), text(3), int(4), int(5))
    {
        let record = OrderRecord {
            id: order.as_str().to_owned(),
            product_id: product as u64,
            quantity,
            buyer_id,
            status,
            total_amount_cents: total,
            created_ms,
            expires_ms: int(6),
        };
        mine(&record.buyer_id)?;
        return Ok(order_json(StatusCode::OK, &record));
    }
    let record = order_from_postgres(feature, &order)
        .await?
        .ok_or(OrdersError::OrderNotFound)?;
    mine(&record.buyer_id)?;
    Ok(order_json(StatusCode::OK, &record))
}

/// `POST /products` (admin).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    name: String,
    stock: i64,
    price_cents: i64,
    merchant_id: i64,
    /// 0 or absent: no limit.
    max_per_buyer: Option<i64>,
}

/// A product with its live stock, as every product route answers it.
#[derive(Serialize, ToSchema)]
#[schema(as = Product)]
struct ProductView<'a> {
    id: u64,
    name: &'a str,
    price_cents: i64,
    merchant_id: i64,
    max_per_buyer: i64,
    /// `available + reserved + sold`.
    stock_total: i64,
    /// For a product split over several slots, with its reserve and the
    /// stock in transit between its buckets.
    available: i64,
    reserved: i64,
    sold: i64,
    /// A product split over several slots: where its stock is. Absent for a
    /// product on one slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<Parts>,
}

impl<'a> ProductView<'a> {
    fn new(id: ProductId, name: &'a str, price_cents: i64, merchant_id: i64, max_per_buyer: i64, stock: Stock) -> Self {
        Self {
            id: id.get(),
            name,
            price_cents,
            merchant_id,
            max_per_buyer,
            stock_total: stock.stock_total,
            available: stock.available,
            reserved: stock.reserved,
            sold: stock.sold,
            split: None,
        }
    }

    fn of_read(id: ProductId, read: &'a ProductRead) -> Self {
        Self {
            split: read.parts.clone(),
            ..Self::new(
                id,
                &read.name,
                read.price_cents,
                read.merchant_id,
                read.max_per_buyer,
                read.stock,
            )
        }
    }
}

/// `POST /products` (admin): the Postgres row first, then the live stock in
/// Redis (a split product's head, its other buckets and their shares of the
/// stock); both are durable before the 201. If the Redis step fails the
/// answer is 503 and the product exists in Postgres only, unsellable
/// (`PRODUCT_NOT_FOUND`) until a restock of it seeds Redis from its row.
#[utoipa::path(post, path = "/products", tag = "orders", summary = "Add a product (admin)",
    request_body = ProductBody,
    responses(
        (status = 201, description = "the product, with its live stock", body = ProductView),
    ))]
pub async fn create_product(feature: &Orders, req: Request<Incoming>) -> Result<HttpResponse, OrdersError> {
    let state = &*feature.ctx;
    let body: ProductBody = read_json(req).await?;
    let product = NewProduct::new(
        body.name,
        body.stock,
        body.price_cents,
        body.merchant_id,
        body.max_per_buyer,
    )?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO products (name, price_cents, merchant_id, max_per_buyer, stock_total)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&product.name)
    .bind(product.price_cents)
    .bind(product.merchant_id)
    .bind(product.max_per_buyer as i32)
    .bind(product.stock)
    .fetch_one(&state.postgres)
    .await?;
    let id = ProductId::new(id)?;
    let request = StockRequest {
        product: id,
        split: feature.settings.stock_split,
        name: &product.name,
        stock_total: product.stock,
        price_cents: product.price_cents,
        merchant_id: product.merchant_id,
        max_per_buyer: product.max_per_buyer,
        add: None,
        key: None,
        idempotency_ttl_ms: feature.settings.idempotency_ttl_ms,
        now_ms: state.clock.now_ms(),
    };
    let decided = lua::stock(&state.executor, &state.keys, request).await?;
    let stock = decided.result?;
    seed_buckets(feature, &request, decided.split).await?;
    if decided.split > 1 {
        split::distribute(feature, id, decided.split, product.stock, request.now_ms).await?;
        if let Some(read) = split::read(&state.redis, &state.keys, id).await? {
            return Ok(json(StatusCode::CREATED, &ProductView::of_read(id, &read)));
        }
    }
    Ok(json(
        StatusCode::CREATED,
        &ProductView::new(
            id,
            &product.name,
            product.price_cents,
            product.merchant_id,
            product.max_per_buyer,
            stock,
        ),
    ))
}

/// `POST /products/{id}/stock` (admin).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    add: i64,
}

/// `POST /products/{id}/stock` (admin): one script call adds to stock_total
/// and available together (seeding the product first if its creation could
/// not). With an `Idempotency-Key`, a repeat replays the first answer.
#[utoipa::path(post, path = "/products/{id}/stock", tag = "orders", summary = "Restock a product (admin)",
    params(("id" = String, Path, description = "the product id"),
           ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII; the first answer is replayed")),
    request_body = RestockBody,
    responses(
        (status = 200, description = "the product", body = ProductView),
    ))]
pub async fn restock(
    feature: &Orders,
    req: Request<Incoming>,
    raw_id: Option<&str>,
) -> Result<HttpResponse, OrdersError> {
    let state = &*feature.ctx;
    let (parts, body) = req.into_parts();
    let id = ProductId::parse(raw_id)?;
    let key = IdempotencyKey::from_headers(&parts.headers)?;
    let body: RestockBody = read_json(Request::from_parts(parts, body)).await?;
    let add = domain::bounded(Field::Add, body.add, 1, PRODUCT_STOCK_MAX)?;
    let row: Option<(String, i64, i64, i32, i64)> =
        sqlx::query_as("SELECT name, price_cents, merchant_id, max_per_buyer, stock_total FROM products WHERE id = $1")
            .bind(id.get() as i64)
            .fetch_optional(&state.postgres)
            .await?;
    let (name, price_cents, merchant_id, max_per_buyer, stock_total) = row.ok_or(OrdersError::ProductNotFound)?;
    let request = StockRequest {
        product: id,
        split: feature.settings.stock_split,
        name: &name,
        stock_total,
        price_cents,
        merchant_id,
        max_per_buyer: i64::from(max_per_buyer),
        add: Some(add),
        key: key.as_ref(),
        idempotency_ttl_ms: feature.settings.idempotency_ttl_ms,
        now_ms: state.clock.now_ms(),
    };
    let decided = lua::stock(&state.executor, &state.keys, request).await?;
    // A split product's answer is its stock across every slot, read after
    // the step (a replay reads it again): the script sees the head's only.
    // Seeding its buckets again heals a creation whose seeding failed.
    let split_read = if decided.split > 1 && decided.result.is_ok() {
        seed_buckets(feature, &request, decided.split).await?;
        split::read(&state.redis, &state.keys, id).await?
    } else {
        None
    };
    let view = |stock| match &split_read {
        Some(read) => json(StatusCode::OK, &ProductView::of_read(id, read)),
        None => json(
            StatusCode::OK,
            &ProductView::new(id, &name, price_cents, merchant_id, i64::from(max_per_buyer), stock),
        ),
    };
    if !decided.replayed {
        return decided.result.map(view);
    }
    super::metrics::idempotent_replay("product_restock");
    let mut response = match decided.result {
        Ok(stock) => view(stock),
        Err(refusal) => error_response(&refusal),
    };
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// Creates the buckets other than the head of a product split in `split`
/// (each on its own slot; idempotent), and remembers the split.
async fn seed_buckets(feature: &Orders, request: &StockRequest<'_>, split: u32) -> Result<(), OrdersError> {
    let state = &*feature.ctx;
    let seeded = join_all((1..split).map(|bucket| {
        let shard = split::bucket_shard(&state.keys, request.product, bucket);
        lua::seed_bucket(&state.executor, &state.keys, StockRequest { split, ..*request }, shard)
    }))
    .await;
    seeded.into_iter().collect::<Result<Vec<()>, _>>()?;
    feature.splits.remember(request.product, split);
    Ok(())
}

/// `GET /products/{id}`: the live counters, read from Redis in one HMGET;
/// a split product's summed over its slots (`split::read`).
#[utoipa::path(get, path = "/products/{id}", tag = "orders", summary = "A product with its live stock",
    params(("id" = String, Path, description = "the product id")),
    responses(
        (status = 200, description = "the product; available + reserved + sold = stock_total", body = ProductView),
    ))]
pub async fn get_product(feature: &Orders, raw_id: Option<&str>) -> Result<HttpResponse, OrdersError> {
    let id = ProductId::parse(raw_id)?;
    let read = split::read(&feature.ctx.redis, &feature.ctx.keys, id)
        .await?
        .ok_or(OrdersError::ProductNotFound)?;
    Ok(json(StatusCode::OK, &ProductView::of_read(id, &read)))
}
