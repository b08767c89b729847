//! `GET /console`: the web console's files, compiled into the binary and served without a token
//! under a strict content-security-policy.
//!
//! The page itself holds no data and no secret: it asks for a token, keeps it in the tab's session
//! storage and calls the same API as everyone else with `authorization: Bearer`. So serving it
//! needs no token, and what it may show is decided by the API's own checks.

use super::{ApiError, ApiResult};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::sync::OnceLock;

/// Only this origin's scripts, styles, images (and `data:` images), and API calls; no inline script
/// or style attribute, no framing, no `<base>`, no form posts: the page cannot be turned against
/// its users by data it shows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file: its name under `/console/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console. `index.html` is also `/console` and `/console/`.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("views.js", JS),
    asset!("timeline.js", JS),
    asset!("deadletters.js", JS),
];

/// `GET /console/<rest>`: the file, or 304 when the client's copy is current, or 404.
pub fn serve(rest: &[&str], request: &HeaderMap) -> ApiResult {
    let name = match rest {
        [] | [""] => "index.html",
        [name] => name,
        _ => "",
    };
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return Err(ApiError::not_found("console file"));
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(asset.body))
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::ETAG, etag.as_str())
        // Revalidate every time: a new daemon version must not run an old script against its API.
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(body))
        .expect("static response parts are valid");
    secure(response.headers_mut());
    Ok(response)
}

/// The headers every console response carries.
fn secure(headers: &mut HeaderMap) {
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    for (name, value) in fixed {
        headers.insert(name, value);
    }
}

/// A strong validator per file: the first 128 bits of its SHA-256, computed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        use sha2::{Digest, Sha256};
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// For tests of other modules: the body of an embedded file.
#[cfg(test)]
fn body_of(name: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|a| a.name == name).map(|a| a.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_its_files_are_served_with_the_policy() {
        let response = serve(&[], &HeaderMap::new()).expect("index");
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(serve(&["nope.js"], &HeaderMap::new()).is_err());
        assert!(serve(&["a", "b"], &HeaderMap::new()).is_err());
    }

    #[test]
    fn a_current_copy_gets_304() {
        let first = serve(&["app.js"], &HeaderMap::new()).expect("app.js");
        let tag = first.headers()[header::ETAG].clone();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, tag);
        let again = serve(&["app.js"], &request).expect("app.js");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            again.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }

    /// The policy forbids inline scripts and style attributes; the files must not rely on them,
    /// and must name no other host.
    #[test]
    fn the_files_use_nothing_inline_and_no_other_host() {
        let index = std::str::from_utf8(body_of("index.html").unwrap()).unwrap();
        assert!(!index.contains("style="), "inline style attribute");
        assert!(!index.contains("<style"), "inline style element");
        for script in index.split("<script").skip(1) {
            assert!(
                script
                    .trim_start()
                    .starts_with("type=\"module\" src=\"/console/"),
                "inline or foreign script: {script}"
            );
        }
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            assert!(!text.contains("innerHTML"), "{} sets innerHTML", asset.name);
            for scheme in ["http://", "https://", "//fonts.", "ws://"] {
                let named = text.matches(scheme).count()
                    - text
                        .matches(&format!("{scheme}www.w3.org/2000/svg"))
                        .count();
                assert_eq!(named, 0, "{} names another host ({scheme})", asset.name);
            }
        }
    }
}
