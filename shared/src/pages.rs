//! The pages (docs/api.md "Pages"): a few HTML pages with their stylesheet, scripts and icon,
//! the files of `shared/pages/` embedded in the binary at build time. Plain files, no build
//! step: what the repository holds is what the browser gets.

use std::sync::LazyLock;

/// A file the pages function serves.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub cache_control: &'static str,
    pub body: &'static str,
}

/// A page is revalidated on every load (its ETag makes that a `304`), so a deploy shows at
/// once. Its stylesheet, scripts and icon may be reused for five minutes unasked: their names
/// carry no content hash (there is no build step to put one there), so this bounds how long a
/// page can meet the previous deploy's scripts.
const PAGE: &str = "no-cache";
const STATIC: &str = "public, max-age=300";

const fn page(path: &'static str, body: &'static str) -> Asset {
    Asset {
        path,
        content_type: "text/html; charset=utf-8",
        cache_control: PAGE,
        body,
    }
}

const fn file(path: &'static str, content_type: &'static str, body: &'static str) -> Asset {
    Asset {
        path,
        content_type,
        cache_control: STATIC,
        body,
    }
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file, by the path it is served at.
pub const ASSETS: &[Asset] = &[
    page("/", include_str!("../pages/index.html")),
    page("/account", include_str!("../pages/account.html")),
    page("/verify-email", include_str!("../pages/verify-email.html")),
    page(
        "/reset-password",
        include_str!("../pages/reset-password.html"),
    ),
    file(
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("../pages/app.css"),
    ),
    file("/assets/app.js", JS, include_str!("../pages/app.js")),
    file("/assets/index.js", JS, include_str!("../pages/index.js")),
    file(
        "/assets/account.js",
        JS,
        include_str!("../pages/account.js"),
    ),
    file(
        "/assets/verify-email.js",
        JS,
        include_str!("../pages/verify-email.js"),
    ),
    file(
        "/assets/reset-password.js",
        JS,
        include_str!("../pages/reset-password.js"),
    ),
    file(
        "/assets/icon.svg",
        "image/svg+xml",
        include_str!("../pages/icon.svg"),
    ),
];

/// The headers every answer of the pages function carries. The pages load nothing from another
/// origin and run no inline script or style; `img-src data:` is for the QR code, which the API
/// returns as a `data:image/svg+xml` URI (an image: it cannot run script).
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Each asset's strong ETag (a SHA-256 prefix of its body), computed once per cold start.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, asset.body.as_bytes());
            let hex: String = digest.as_ref()[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// The asset served at `path`, with its ETag.
pub fn find(path: &str) -> Option<(&'static Asset, &'static str)> {
    let index = ASSETS.iter().position(|asset| asset.path == path)?;
    Some((&ASSETS[index], ETAGS[index].as_str()))
}

/// Whether an `If-None-Match` header value names `etag` (RFC 9110 §13.1.2: weak comparison, a
/// list, or `*`).
pub fn none_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_at_its_path_and_nothing_else_is() {
        for asset in ASSETS {
            let (found, etag) = find(asset.path).expect(asset.path);
            assert_eq!(found.path, asset.path);
            assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 26);
        }
        for path in [
            "/index.html",
            "/account/",
            "/assets/",
            "/assets/missing.js",
            "",
        ] {
            assert!(find(path).is_none(), "{path}");
        }
    }

    #[test]
    fn etags_differ_between_assets() {
        let mut etags: Vec<_> = ASSETS
            .iter()
            .map(|a| find(a.path).expect(a.path).1)
            .collect();
        etags.sort_unstable();
        etags.dedup();
        assert_eq!(etags.len(), ASSETS.len());
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let etag = "\"abc\"";
        assert!(none_match("\"abc\"", etag));
        assert!(none_match("W/\"abc\"", etag));
        assert!(none_match("\"x\", \"abc\"", etag));
        assert!(none_match("*", etag));
        assert!(!none_match("\"abcd\"", etag));
        assert!(!none_match("", etag));
    }

    /// The pages name only files that are served, and nothing of another origin, and hold no
    /// inline script, style or event handler (the CSP would refuse them).
    #[test]
    fn pages_refer_only_to_served_files_and_hold_nothing_inline() {
        for asset in ASSETS
            .iter()
            .filter(|a| a.content_type.starts_with("text/html"))
        {
            let html = asset.body;
            for reference in html
                .split(['"', '\''])
                .filter(|s| s.starts_with("/assets/"))
            {
                assert!(find(reference).is_some(), "{}: {reference}", asset.path);
            }
            for forbidden in [
                "<style",
                "style=",
                "javascript:",
                "http://",
                "https://",
                "<script>",
            ] {
                assert!(!html.contains(forbidden), "{}: {forbidden}", asset.path);
            }
            // An event handler attribute: ` on…=`.
            let handler = html.match_indices(" on").any(|(at, _)| {
                let rest = &html[at + 3..];
                let name = rest.len()
                    - rest
                        .trim_start_matches(|c: char| c.is_ascii_lowercase())
                        .len();
                name > 0 && rest[name..].starts_with('=')
            });
            assert!(!handler, "{}: an inline event handler", asset.path);
        }
    }
}
