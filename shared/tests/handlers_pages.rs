//! The pages function's answers: each file with its type, caching and ETag, `304` for a
//! current copy, `404` for an unknown asset, and the security headers on every answer.

use lambda_http::{Body, Request, Response, http};
use shared::{http::handlers, pages::ASSETS};

fn get(path: &str, if_none_match: Option<&str>) -> Request {
    let mut builder = http::Request::builder().method("GET").uri(path);
    if let Some(etag) = if_none_match {
        builder = builder.header("if-none-match", etag);
    }
    builder.body(Body::Empty).expect("request")
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn assert_security_headers(response: &Response<Body>) {
    let csp = header(response, "content-security-policy");
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(response, "x-frame-options"), "DENY");
    assert_eq!(header(response, "referrer-policy"), "no-referrer");
    assert_eq!(header(response, "x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn every_file_is_served_with_its_type_caching_and_etag_and_a_current_copy_gets_304() {
    for asset in ASSETS {
        let response = handlers::pages(get(asset.path, None))
            .await
            .expect("answer");
        assert_eq!(response.status(), 200, "{}", asset.path);
        assert_security_headers(&response);
        assert_eq!(header(&response, "content-type"), asset.content_type);
        let html = asset.content_type.starts_with("text/html");
        let caching = header(&response, "cache-control");
        assert_eq!(
            caching,
            if html {
                "no-cache"
            } else {
                "public, max-age=300"
            }
        );
        assert!(matches!(response.body(), Body::Text(t) if t == asset.body));
        let etag = header(&response, "etag").to_owned();

        for validator in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
        ] {
            let again = handlers::pages(get(asset.path, Some(&validator)))
                .await
                .expect("answer");
            assert_eq!(again.status(), 304, "{} with {validator}", asset.path);
            assert!(matches!(again.body(), Body::Empty));
            assert_eq!(header(&again, "etag"), etag);
            assert_security_headers(&again);
        }
        let stale = handlers::pages(get(asset.path, Some("\"stale\"")))
            .await
            .expect("answer");
        assert_eq!(stale.status(), 200);
    }
}

#[tokio::test]
async fn an_unknown_asset_is_a_404_problem_with_the_same_headers() {
    let response = handlers::pages(get("/assets/missing.js", None))
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    assert_eq!(header(&response, "cache-control"), "no-store");
    assert_security_headers(&response);
    assert!(matches!(response.body(), Body::Text(t) if t.contains("\"code\":\"not_found\"")));
}
