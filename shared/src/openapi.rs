//! The OpenAPI 3.1 document of every route: `openapi.yaml` at the repository's root, turned
//! into JSON by the build script and served by `GET /openapi.json` (the `keys` function).

use crate::error::AuthError;
use serde_json::json;

/// The document as written, in JSON.
pub const DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// Every documented path with its methods, as an `Allow` header lists them: the document is
/// the one list of routes, and the functions' router and the template are checked against it.
pub const ROUTES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/routes.rs"));

/// The answer to a request no route takes (API Gateway's `$default` route sends them to the
/// `keys` function): `405` with `Allow` when its path has routes for other methods (RFC 9110
/// §15.5.6), else `404`. `None` when the document has this very route, which only a routing
/// mistake sends here.
pub fn unrouted(method: &str, path: &str) -> Option<AuthError> {
    let Some((_, allow)) = ROUTES.iter().find(|(template, _)| matches(template, path)) else {
        return Some(AuthError::NotFound);
    };
    if allow.split(", ").any(|m| m.eq_ignore_ascii_case(method)) {
        return None;
    }
    Some(AuthError::MethodNotAllowed { allow })
}

/// Whether `path` matches a route's path, where `{name}` stands for one non-empty segment. As
/// in API Gateway, nothing is trimmed: `/auth/me/` is not `/auth/me`.
fn matches(template: &str, path: &str) -> bool {
    let (mut want, mut have) = (template.split('/'), path.split('/'));
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(w), Some(h)) if w.starts_with('{') && w.ends_with('}') => {
                if h.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(h)) if w == h => {}
            _ => return false,
        }
    }
}

/// The document a deployment serves: its `servers` name the deployment's own base URL when the
/// issuer is an http(s) URL (as it must be for API Gateway's JWT authorizer, and as `make dev`
/// sets it), so a client generated from the served copy calls the API that served it. Any
/// other issuer leaves the document's own `servers`.
pub fn served(issuer: &str) -> String {
    let web = url::Url::parse(issuer).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !web {
        return DOCUMENT.to_owned();
    }
    let servers = json!({ "servers": [{ "url": issuer.trim_end_matches('/') }] }).to_string();
    // `{"servers":[…]}` without its braces; the build wrote the document's own the same way,
    // so the text swap keeps the document's member order without parsing it at run time.
    DOCUMENT.replacen(SERVERS, &servers[1..servers.len() - 1], 1)
}

/// The document's top-level `"servers":[…]`, exactly as it appears in [`DOCUMENT`].
const SERVERS: &str = include_str!(concat!(env!("OUT_DIR"), "/servers.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_document_is_openapi_3_1_with_paths() {
        let document: Value = serde_json::from_str(DOCUMENT).expect("JSON");
        assert_eq!(document["openapi"], "3.1.0");
        assert!(document["paths"]["/auth/login"]["post"].is_object());
        // `served` swaps this text: it must be the top-level member, found once.
        assert_eq!(DOCUMENT.matches(SERVERS).count(), 1);
    }

    #[test]
    fn a_path_of_the_document_with_another_method_is_405_with_its_methods_and_others_404() {
        assert_eq!(
            unrouted("PUT", "/auth/me"),
            Some(AuthError::MethodNotAllowed {
                allow: "GET, DELETE"
            })
        );
        assert_eq!(
            unrouted("GET", "/auth/sessions/0b6f5b0e-1c1a-4a8e-9d44-0a0a0a0a0a0a"),
            Some(AuthError::MethodNotAllowed { allow: "DELETE" })
        );
        assert_eq!(unrouted("get", "/auth/me"), None);
        assert_eq!(unrouted("DELETE", "/auth/sessions/x"), None);
        assert_eq!(unrouted("GET", "/auth/me/"), Some(AuthError::NotFound));
        assert_eq!(
            unrouted("DELETE", "/auth/sessions/"),
            Some(AuthError::NotFound)
        );
        assert_eq!(
            unrouted("GET", "/auth/sessions/x/y"),
            Some(AuthError::NotFound)
        );
        assert_eq!(unrouted("GET", "/nowhere"), Some(AuthError::NotFound));
        assert_eq!(unrouted("GET", "/index.html"), Some(AuthError::NotFound));
        assert_eq!(unrouted("GET", "/assets/"), Some(AuthError::NotFound));
        assert_eq!(
            unrouted("POST", "/"),
            Some(AuthError::MethodNotAllowed { allow: "GET" })
        );
        assert_eq!(unrouted("GET", "/assets/app.js"), None);
    }

    #[test]
    fn an_http_issuer_becomes_the_only_server_and_nothing_else_changes() {
        let served: Value =
            serde_json::from_str(&served("https://auth.example.com/")).expect("JSON");
        assert_eq!(
            served["servers"],
            json!([{ "url": "https://auth.example.com" }])
        );
        let mut written: Value = serde_json::from_str(DOCUMENT).expect("JSON");
        written["servers"] = served["servers"].clone();
        assert_eq!(served, written);
    }

    #[test]
    fn an_issuer_that_is_no_web_url_leaves_the_documents_servers() {
        assert_eq!(served("auth-lambda"), DOCUMENT);
        assert_eq!(served("urn:example:auth"), DOCUMENT);
    }
}
