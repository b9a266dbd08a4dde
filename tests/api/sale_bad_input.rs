//! The sale's bad input: each case is a 4xx JSON error with a stable code,
//! never a 500 and never partial state.

use hyper::Method;

use crate::helpers::spawn_app;

#[tokio::test]
async fn bad_requests_get_stable_error_codes() {
    let app = spawn_app(&[]).await;
    let long_user = "u".repeat(65);
    let long_code = "1".repeat(65);
    let cases: Vec<(Method, String, Option<&str>, u16, &str)> = vec![
        (Method::POST, "/checkout?id=1".into(), None, 400, "MISSING_USER_ID"),
        (
            Method::POST,
            "/checkout?user_id=&id=1".into(),
            None,
            400,
            "MISSING_USER_ID",
        ),
        (
            Method::POST,
            format!("/checkout?user_id={long_user}&id=1"),
            None,
            400,
            "INVALID_USER_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=a%0Ab&id=1".into(),
            None,
            400,
            "INVALID_USER_ID",
        ),
        (Method::POST, "/checkout?user_id=u".into(), None, 400, "MISSING_ITEM_ID"),
        (
            Method::POST,
            "/checkout?user_id=u&id=".into(),
            None,
            400,
            "MISSING_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=abc".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=0".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=-5".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=1.5".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=99999999999".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=10001".into(),
            None,
            404,
            "ITEM_NOT_FOUND",
        ),
        (Method::POST, "/purchase".into(), None, 400, "MISSING_CODE"),
        (Method::POST, "/purchase?code=".into(), None, 400, "MISSING_CODE"),
        (
            Method::POST,
            "/purchase?code=a1b2c3d4e5f6g7h8".into(),
            None,
            400,
            "INVALID_CODE",
        ),
        (
            Method::POST,
            "/purchase?code=CHK_219b6c54_5175".into(),
            None,
            400,
            "INVALID_CODE",
        ),
        (
            Method::POST,
            format!("/purchase?code={long_code}"),
            None,
            400,
            "INVALID_CODE",
        ),
        (
            Method::POST,
            format!("/purchase?code={}-{}", app.sale_id(), "0".repeat(32)),
            None,
            404,
            "CODE_NOT_FOUND",
        ),
        (
            Method::POST,
            format!("/purchase?code=1-{}", "0".repeat(32)),
            None,
            410,
            "SALE_OVER",
        ),
        (Method::POST, "/purchase".into(), Some("{not json"), 400, "INVALID_JSON"),
        (
            Method::POST,
            "/purchase".into(),
            Some(r#"{"checkout_code": ""}"#),
            400,
            "MISSING_CODE",
        ),
        (
            Method::POST,
            "/purchase".into(),
            Some(r#"{"checkout_code": 42}"#),
            400,
            "INVALID_JSON",
        ),
        (Method::POST, "/nope".into(), None, 404, "NOT_FOUND"),
        (
            Method::GET,
            "/checkout?user_id=u&id=1".into(),
            None,
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (Method::DELETE, "/purchase".into(), None, 405, "METHOD_NOT_ALLOWED"),
        (Method::POST, "/health".into(), None, 405, "METHOD_NOT_ALLOWED"),
        (
            Method::POST,
            format!("/checkout?user_id=u&id=1&pad={}", "x".repeat(3000)),
            None,
            414,
            "URI_TOO_LONG",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = app.request(method.clone(), &path, body).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (status, code),
            "{method} {path} {body:?}: {:?}",
            reply.body
        );
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        if status == 405 {
            // Allow comes from the route list: the methods the path has.
            let allow = reply.headers.get("allow").and_then(|v| v.to_str().ok());
            let want = if path == "/health" { "GET" } else { "POST" };
            assert_eq!(allow, Some(want), "{method} {path}");
        }
    }
    // None of those sold anything or opened a code that could be spent.
    assert_eq!(app.sold_in_redis(app.sale_id()).await, 0);
    app.finish().await;
}
