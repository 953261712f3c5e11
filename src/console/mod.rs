//! The operator console at `/console`: a small page for the people who support the platform's
//! customers — connect an Aircall company, see each connection's health, and why each call was
//! or was not imported. Its files are compiled into the binary (no front-end build, no separate
//! server) and it talks only to the admin API, with the admin token the operator enters.
//!
//! Every answer carries a Content-Security-Policy that lets the page load and call nothing but
//! this origin: no font, script or style comes from elsewhere.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const PAGE: Asset = Asset {
    path: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};

const ASSETS: [Asset; 3] = [
    Asset {
        path: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/console.js"),
    },
    Asset {
        path: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/console.css"),
    },
    Asset {
        path: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/icon.svg"),
    },
];

/// Only this origin, for everything; recordings play from `blob:` URLs the page makes.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; media-src 'self' blob:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// Adds `/console` (the page) and `/console/assets/{file}` to an app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(page))
        .route("/console/", web::get().to(page))
        .route("/console/assets/{file}", web::get().to(asset));
}

async fn page() -> HttpResponse {
    respond(&PAGE)
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.path == file.as_str()) {
        Some(asset) => respond(asset),
        None => crate::web::not_found().await,
    }
}

fn respond(asset: &Asset) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        // Revalidated at each load, so a new version of the service serves its own page.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_assets_that_are_served() {
        let mut referenced = 0;
        for part in PAGE.body.split("/console/assets/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(
                ASSETS.iter().any(|a| a.path == name),
                "index.html names {name}, which is not embedded"
            );
            referenced += 1;
        }
        assert_eq!(
            referenced,
            ASSETS.len(),
            "every embedded file is used by the page"
        );
    }

    #[test]
    fn nothing_is_loaded_from_another_origin() {
        for asset in ASSETS.iter().chain([&PAGE]) {
            for scheme in ["http://", "https://", "//fonts", "@import", "url("] {
                for (at, _) in asset.body.match_indices(scheme) {
                    // The SVG namespace is an identifier, not a request.
                    assert!(
                        asset.body[at..].starts_with("http://www.w3.org/2000/svg"),
                        "{} mentions {scheme}",
                        asset.path
                    );
                }
            }
        }
    }
}
