//! HTTP handlers of the sale. Each parses its input into domain types, makes
//! exactly one script call, and shapes the reply.

use fred::interfaces::KeysInterface;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::domain::{CheckoutCode, ItemId, SaleWindow, UserId};
use super::limits::OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR;
use super::lua::{self, CheckoutRequest, SaleKeys};
use super::{Sale, SaleError, split};
use crate::redis::lua::ScriptError;
use crate::server::RequestError;
use crate::server::error::ErrorBody;
use crate::server::http::{HttpResponse, Query, json, read_body, rfc3339};

/// The sale's part of `GET /openapi.json`.
#[derive(OpenApi)]
#[openapi(
    paths(checkout, purchase, current, code_state),
    components(schemas(CheckoutIssued, PurchaseBody, Purchased, CurrentSale, CodeState, ErrorBody))
)]
pub struct SaleApi;

#[derive(Serialize, ToSchema)]
struct CheckoutIssued<'a> {
    code: &'a str,
    /// The same code under the name clients of the JSON-body purchase read.
    checkout_code: &'a str,
    expires_at: String,
    sale_id: u64,
    item_id: u32,
    user_id: &'a str,
}

#[utoipa::path(
    post,
    path = "/checkout",
    tag = "sale",
    summary = "Get a checkout code for an item of the current sale",
    params(
        ("user_id" = String, Query, description = "1-64 bytes, no control characters"),
        ("id" = Option<String>, Query, description = "item number 1..=ITEMS_PER_SALE (`item_id`, and `itemN`, accepted too)"),
        ("item_id" = Option<String>, Query, description = "the same as `id`, as the 003 spec's clients send it"),
    ),
    responses(
        (status = 200, description = "a code, bound to the sale, user and item", body = CheckoutIssued),
    )
)]
pub async fn checkout(feature: &Sale, req: Request<Incoming>) -> Result<HttpResponse, SaleError> {
    let state = &*feature.ctx;
    let query = Query::parse(req.uri().query());
    let user = UserId::parse(query.get(&["user_id"]))?;
    let item = ItemId::parse(query.get(&["id", "item_id"]))?;

    let now_ms = state.clock.now_ms();
    let sale = &feature.settings;
    let window = SaleWindow::at(now_ms, sale.period_secs);
    // A code never outlives its sale: past the end it could not be spent.
    let expires_ms = (now_ms + (sale.checkout_ttl_secs * 1000) as i64).min(window.ends_ms);
    let code = if sale.split > 1 {
        split::new_code(window, &user, item, sale.split)
    } else {
        CheckoutCode::generate(window.sale_id)
    };
    let request = CheckoutRequest {
        window,
        items: sale.items,
        per_user_limit: sale.per_user_limit,
        user: &user,
        item,
        code: &code,
        now_ms,
        expires_ms,
        refused_bound: state.config.outbox_events_max / OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR,
    };
    if sale.split > 1 {
        split::checkout(&state.executor, &state.keys, &request, sale.split)
            .await
            .map_err(|e| lua::with_retry_after(e, &request))?;
    } else {
        lua::checkout(&state.executor, &state.keys, request).await?;
    }
    Ok(json(
        StatusCode::OK,
        &CheckoutIssued {
            code: code.as_str(),
            checkout_code: code.as_str(),
            expires_at: rfc3339(expires_ms),
            sale_id: window.sale_id,
            item_id: item.get(),
            user_id: user.as_str(),
        },
    ))
}

/// The body `POST /purchase` accepts when the code is not in the query.
#[derive(Deserialize, ToSchema)]
struct PurchaseBody {
    checkout_code: Option<String>,
    code: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Purchased {
    status: &'static str,
    success: bool,
    message: &'static str,
    sale_id: u64,
    item_id: i64,
    user_purchases: i64,
    purchased_at: String,
}

#[utoipa::path(
    post,
    path = "/purchase",
    tag = "sale",
    summary = "Spend a checkout code: the first purchase of an item wins",
    params(("code" = Option<String>, Query, description = "the code (or in the body as `checkout_code`)")),
    request_body(content = Option<PurchaseBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "the item is the user's", body = Purchased),
    )
)]
pub async fn purchase(feature: &Sale, req: Request<Incoming>) -> Result<HttpResponse, SaleError> {
    let state = &*feature.ctx;
    let from_query = Query::parse(req.uri().query())
        .get(&["code", "checkout_code"])
        .map(str::to_owned);
    let raw = match from_query {
        Some(code) => Some(code),
        None => {
            let body = read_body(req).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                let parsed: PurchaseBody =
                    serde_json::from_slice(&body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
                parsed.checkout_code.or(parsed.code)
            }
        }
    };
    let code = CheckoutCode::parse(raw.as_deref())?;

    let now_ms = state.clock.now_ms();
    let active = SaleWindow::at(now_ms, feature.settings.period_secs);
    // A code of another sale can never be spent; its key may be gone already
    // (see CODE_RETENTION_AFTER_EXPIRY), so answer from the clock. The script
    // checks the same again, atomically, for codes of the active sale.
    if code.sale_id() != active.sale_id {
        return Err(SaleError::SaleOver);
    }
    let split = feature.settings.split;
    let done = if split > 1 {
        split::purchase(&state.executor, &state.keys, &code, active, now_ms, split).await?
    } else {
        lua::purchase(&state.executor, &state.keys, &code, active, now_ms).await?
    };
    Ok(json(
        StatusCode::OK,
        &Purchased {
            status: "success",
            success: true,
            message: "Item purchased successfully",
            sale_id: code.sale_id(),
            item_id: done.item_id,
            user_purchases: done.user_purchases,
            purchased_at: rfc3339(now_ms),
        },
    ))
}

#[derive(Serialize, ToSchema)]
struct CurrentSale {
    sale_id: u64,
    starts_at: String,
    ends_at: String,
    /// False until the sale's first checkout opens it.
    opened: bool,
    items_total: u64,
    items_sold: u64,
    items_left: u64,
    per_user_limit: u64,
}

/// Reads of the sale's meta hash and sold bitmap: no state changes, so no
/// script. Items sold are counted from the bitmap rather than kept in a
/// counter, which would cost every purchase one more write.
#[utoipa::path(
    get,
    path = "/sales/current",
    tag = "sale",
    summary = "The current sale, read live from Redis",
    responses(
        (status = 200, description = "window, items total / sold / left, per-user limit", body = CurrentSale),
    )
)]
pub async fn current(feature: &Sale) -> Result<HttpResponse, SaleError> {
    let state = &*feature.ctx;
    let window = SaleWindow::at(state.clock.now_ms(), feature.settings.period_secs);
    let lua::SaleProgress {
        items,
        limit,
        sold: items_sold,
    } = lua::progress(&state.redis, &state.keys, window.sale_id, feature.settings.split)
        .await
        .map_err(|e| SaleError::Script(ScriptError::Redis(e)))?;
    let items_total = items.unwrap_or(u64::from(feature.settings.items));
    Ok(json(
        StatusCode::OK,
        &CurrentSale {
            sale_id: window.sale_id,
            starts_at: rfc3339(window.starts_ms),
            ends_at: rfc3339(window.ends_ms),
            opened: items.is_some(),
            items_total,
            items_sold,
            items_left: items_total.saturating_sub(items_sold),
            per_user_limit: limit.unwrap_or(u64::from(feature.settings.per_user_limit)),
        },
    ))
}

#[derive(Serialize, ToSchema)]
struct CodeState {
    code: String,
    /// `issued` (spendable until `expires_at`), `spent`, `expired`, or, in
    /// a sale split over several slots, `void` (refused for good, or a
    /// purchase abandoned after a 503: it did not go through).
    state: &'static str,
    sale_id: u64,
    item_id: u32,
    expires_at: String,
    /// When it was spent, for `spent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    purchased_at: Option<String>,
}

/// `GET /codes/{code}`: what became of a code, read-only. After a 503 on
/// purchase (the call may or may not have run), a client looks here rather
/// than buying again. The code is the bearer's secret, so its holder may see
/// its item; the user it was issued to is not shown.
#[utoipa::path(
    get,
    path = "/codes/{code}",
    tag = "sale",
    summary = "What became of a checkout code; read-only",
    params(("code" = String, Path, description = "a code this engine issued")),
    responses(
        (status = 200, description = "`issued`, `spent` or `expired`", body = CodeState),
    )
)]
pub async fn code_state(feature: &Sale, raw: Option<&str>) -> Result<HttpResponse, SaleError> {
    let state = &*feature.ctx;
    let decoded = raw.map(|r| percent_encoding::percent_decode_str(r).decode_utf8_lossy().into_owned());
    let code = CheckoutCode::parse(decoded.as_deref())?;
    // A split sale's code lives on its item's part, named in the code.
    let part = if feature.settings.split > 1 { code.parts().1 } else { 0 };
    if part >= feature.settings.split {
        return Err(SaleError::CodeNotFound);
    }
    let key = SaleKeys::of_part(&state.keys, code.sale_id(), part).code(&code);
    let stored: Option<String> = state
        .redis
        .get(key)
        .await
        .map_err(|e| SaleError::Script(ScriptError::Redis(e)))?;
    let stored = stored.ok_or(SaleError::CodeNotFound)?;
    // "sale|user|item|expires|limit[|used_at]", as checkout.lua writes it;
    // a split sale's may end "|void|<reason>" instead (sale_item.lua).
    let fields: Vec<&str> = stored.split('\u{1f}').collect();
    if fields.get(5) == Some(&"void") {
        return Ok(json(
            StatusCode::OK,
            &CodeState {
                code: code.as_str().to_owned(),
                state: "void",
                sale_id: code.sale_id(),
                item_id: fields.get(2).and_then(|f| f.parse().ok()).unwrap_or_default(),
                expires_at: fields
                    .get(3)
                    .and_then(|f| f.parse().ok())
                    .map(rfc3339)
                    .unwrap_or_default(),
                purchased_at: None,
            },
        ));
    }
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let (Some(item), Some(expires_ms)) = (field(2), field(3)) else {
        return Err(SaleError::Script(ScriptError::UnexpectedReply {
            script: "code_state",
            detail: "stored code has an unexpected shape".into(),
        }));
    };
    let used_ms = field(5);
    let now_ms = state.clock.now_ms();
    let word = match used_ms {
        Some(_) => "spent",
        None if now_ms >= expires_ms => "expired",
        None => "issued",
    };
    Ok(json(
        StatusCode::OK,
        &CodeState {
            code: code.as_str().to_owned(),
            state: word,
            sale_id: code.sale_id(),
            item_id: u32::try_from(item).unwrap_or_default(),
            expires_at: rfc3339(expires_ms),
            purchased_at: used_ms.map(rfc3339),
        },
    ))
}
