//! The orders' part of `GET /openapi.json`: every route, its parameters,
//! bodies, answers and error codes.

#![allow(dead_code)] // the items below describe the API; only their derives are used

use utoipa::{OpenApi, ToSchema};

use crate::server::error::ErrorBody;

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
        reconcile
    ),
    components(schemas(OrderBody, Order, ProductBody, Product, RestockBody, Reconcile, Mismatch, ErrorBody))
)]
pub struct OrdersApi;

/// `POST /orders`.
#[derive(ToSchema)]
struct OrderBody {
    product_id: i64,
    /// 1 to the named bound (`ORDER_QUANTITY_MAX`).
    quantity: i64,
    /// 1-64 bytes, no control characters.
    buyer_id: String,
    /// 1-3600: a hold (`reserved` until confirmed, cancelled or expired).
    hold_secs: Option<i64>,
}

#[derive(ToSchema)]
struct Order {
    /// A UUID.
    id: String,
    product_id: u64,
    quantity: i64,
    buyer_id: String,
    /// `completed`, `reserved`, `cancelled` or `expired`.
    status: String,
    total_amount_cents: i64,
    created_at: String,
    /// For a hold.
    expires_at: Option<String>,
}

/// `POST /products` (admin).
#[derive(ToSchema)]
struct ProductBody {
    name: String,
    stock: i64,
    price_cents: i64,
    merchant_id: i64,
    /// 0 or absent: no limit.
    max_per_buyer: Option<i64>,
}

#[derive(ToSchema)]
struct Product {
    id: u64,
    name: String,
    price_cents: i64,
    merchant_id: i64,
    max_per_buyer: i64,
    stock_total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
}

/// `POST /products/{id}/stock` (admin).
#[derive(ToSchema)]
struct RestockBody {
    add: i64,
}

#[derive(ToSchema)]
struct Reconcile {
    ok: bool,
    checked: usize,
    products_checked: usize,
    sales_checked: usize,
    /// Outbox events set aside and not yet replayed (`GET /admin/dead-letters`);
    /// each is a mismatch until a retry resolves it.
    dead_letters_unresolved: i64,
    mismatches: Vec<Mismatch>,
}

#[derive(ToSchema)]
struct Mismatch {
    /// `product`, `sale` or `dead_letter` (`id` is the dead letter's, `field`
    /// `unresolved`).
    kind: String,
    id: i64,
    field: String,
    redis: i64,
    postgres: i64,
}

#[utoipa::path(post, path = "/orders", tag = "orders", summary = "Order a product: completed at once, or held with hold_secs",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII; the first answer is replayed")),
    request_body = OrderBody,
    responses(
        (status = 200, description = "the order (`Idempotent-Replayed: true` on a replay)", body = Order),
        (status = 400, description = "`INVALID_PRODUCT_ID`, `INVALID_QUANTITY`, `INVALID_BUYER_ID`, `INVALID_HOLD_SECS`, `INVALID_IDEMPOTENCY_KEY`, `INVALID_JSON`", body = ErrorBody),
        (status = 403, description = "`BUYER_LIMIT_REACHED`", body = ErrorBody),
        (status = 404, description = "`PRODUCT_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`OUT_OF_STOCK`: nothing was taken", body = ErrorBody),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`", body = ErrorBody),
        (status = 503, description = "`OUTBOX_FULL`; `REDIS_UNAVAILABLE` with `order_id`, the id the order has if it was made (look it up: `GET /orders/{id}`)", body = ErrorBody),
    ))]
fn create_order() {}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", summary = "An order with its current status",
    params(("id" = String, Path, description = "the order's UUID")),
    responses(
        (status = 200, description = "the order", body = Order),
        (status = 400, description = "`INVALID_ORDER_ID`", body = ErrorBody),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn get_order() {}

#[utoipa::path(post, path = "/orders/{id}/confirm", tag = "orders", summary = "Confirm a hold: it becomes completed",
    params(("id" = String, Path, description = "the order's UUID"),
           ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII")),
    responses(
        (status = 200, description = "the order, completed", body = Order),
        (status = 400, description = "`INVALID_ORDER_ID`, `INVALID_IDEMPOTENCY_KEY`", body = ErrorBody),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`ORDER_CANCELLED`", body = ErrorBody),
        (status = 410, description = "`ORDER_EXPIRED`", body = ErrorBody),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`", body = ErrorBody),
        (status = 503, description = "`OUTBOX_FULL`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn confirm_order() {}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", summary = "Cancel a hold: its stock returns",
    params(("id" = String, Path, description = "the order's UUID"),
           ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII")),
    responses(
        (status = 200, description = "the order, cancelled (or expired, unchanged)", body = Order),
        (status = 400, description = "`INVALID_ORDER_ID`, `INVALID_IDEMPOTENCY_KEY`", body = ErrorBody),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`ORDER_COMPLETED`", body = ErrorBody),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`", body = ErrorBody),
        (status = 503, description = "`OUTBOX_FULL`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn cancel_order() {}

#[utoipa::path(post, path = "/products", tag = "orders", summary = "Add a product (admin)",
    security(("admin" = [])),
    request_body = ProductBody,
    responses(
        (status = 201, description = "the product, with its live stock", body = Product),
        (status = 400, description = "`INVALID_NAME`, `INVALID_STOCK`, `INVALID_PRICE`, `INVALID_MERCHANT_ID`, `INVALID_MAX_PER_BUYER`, `INVALID_JSON`", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`ADMIN_DISABLED`", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn create_product() {}

#[utoipa::path(get, path = "/products/{id}", tag = "orders", summary = "A product with its live stock",
    params(("id" = String, Path, description = "the product id")),
    responses(
        (status = 200, description = "the product; available + reserved + sold = stock_total", body = Product),
        (status = 400, description = "`INVALID_PRODUCT_ID`", body = ErrorBody),
        (status = 404, description = "`PRODUCT_NOT_FOUND`", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn get_product() {}

#[utoipa::path(post, path = "/products/{id}/stock", tag = "orders", summary = "Restock a product (admin)",
    security(("admin" = [])),
    params(("id" = String, Path, description = "the product id"),
           ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII; the first answer is replayed")),
    request_body = RestockBody,
    responses(
        (status = 200, description = "the product", body = Product),
        (status = 400, description = "`INVALID_PRODUCT_ID`, `INVALID_ADD`, `INVALID_IDEMPOTENCY_KEY`, `INVALID_JSON`", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`ADMIN_DISABLED`", body = ErrorBody),
        (status = 404, description = "`PRODUCT_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`STOCK_LIMIT`", body = ErrorBody),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`", body = ErrorBody),
        (status = 503, description = "`OUTBOX_FULL`, `STORE_UNAVAILABLE`, `REDIS_UNAVAILABLE` (repeat with the same `Idempotency-Key`, or read the product)", body = ErrorBody),
    ))]
fn restock() {}

#[utoipa::path(get, path = "/admin/reconcile", tag = "orders", summary = "Redis's live counts against Postgres's history (admin)",
    security(("admin" = [])),
    responses(
        (status = 200, description = "`ok` and every mismatch, per product, per flash sale and per unresolved dead letter", body = Reconcile),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`ADMIN_DISABLED`", body = ErrorBody),
        (status = 503, description = "`BACKLOG_NOT_FLUSHED`, `STORE_UNAVAILABLE`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn reconcile() {}
