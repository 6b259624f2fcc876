//! Spin's HTTP routing: exact routes beat wildcards, then the most specific
//! pattern wins; `/...` is a trailing wildcard and `:name` captures a
//! segment. Matching is done by `routefinder`, the crate Spin itself uses,
//! so the precedence is Spin's.

use anyhow::{anyhow, Result};

#[derive(Debug, Clone)]
struct Handler {
    component: String,
    based_route: String,
    raw_route: String,
}

#[derive(Debug)]
pub struct Router {
    inner: routefinder::Router<Handler>,
}

/// A matched route and what Spin tells the component about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub component: String,
    /// The route with the base path applied (`spin-matched-route`).
    pub based_route: String,
    /// The route as written in spin.toml (`spin-raw-component-route`).
    pub raw_route: String,
    /// `:name` captures, in pattern order.
    pub captures: Vec<(String, String)>,
    /// The part of the path the trailing wildcard matched (`spin-path-info`).
    pub path_info: String,
}

impl RouteMatch {
    /// `spin-component-route`: the raw route without its `/...`.
    pub fn component_route(&self) -> &str {
        self.raw_route
            .strip_suffix("/...")
            .unwrap_or(&self.raw_route)
    }
}

/// Strips one trailing slash, as Spin does.
fn sanitize(s: &str) -> &str {
    s.strip_suffix('/').unwrap_or(s)
}

impl Router {
    /// Builds the table from (component, route) pairs; a later duplicate
    /// route replaces an earlier one, as in Spin.
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut by_route: Vec<(String, Handler)> = Vec::new();
        for (component, raw) in routes {
            let absolute = if raw.starts_with('/') {
                raw.to_owned()
            } else {
                format!("/{raw}")
            };
            let based_route = sanitize(&absolute).to_owned();
            let handler = Handler {
                component: component.to_owned(),
                based_route,
                raw_route: raw.to_owned(),
            };
            match by_route.iter_mut().find(|(r, _)| r == raw) {
                Some(slot) => slot.1 = handler,
                None => by_route.push((raw.to_owned(), handler)),
            }
        }
        let mut inner = routefinder::Router::new();
        for (_, h) in by_route {
            let spec = match h.based_route.strip_suffix("/...") {
                Some(prefix) => format!("{prefix}/*"),
                None => h.based_route.clone(),
            };
            let (component, raw) = (h.component.clone(), h.raw_route.clone());
            inner
                .add(spec.as_str(), h)
                .map_err(|e| anyhow!("route `{raw}` of component `{component}`: {e}"))?;
        }
        Ok(Self { inner })
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let m = self.inner.best_match(path)?;
        let h = m.handler();
        let captures = m.captures();
        let path_info = captures
            .wildcard()
            .map(|w| match (w.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".into(),
                (false, false) => format!("/{w}"),
                (false, true) => format!("/{w}/"),
            })
            .unwrap_or_default();
        Some(RouteMatch {
            component: h.component.clone(),
            based_route: h.based_route.clone(),
            raw_route: h.raw_route.clone(),
            captures: captures
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            path_info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::build([
            ("root", "/..."),
            ("api", "/api/..."),
            ("exact", "/api/users"),
            ("thread", "/api/threads/:id"),
            ("msgs", "/api/threads/:id/messages"),
            ("files", "/static/..."),
        ])
        .unwrap()
    }

    // Exact beats wildcard, longer prefix beats shorter, captures are named, path info is what the wildcard took.
    #[test]
    fn precedence_and_captures() {
        let r = router();
        assert_eq!(r.route("/api/users").unwrap().component, "exact");
        let m = r.route("/api/users/7").unwrap();
        assert_eq!(
            (m.component.as_str(), m.path_info.as_str()),
            ("api", "/users/7")
        );
        let m = r.route("/api/threads/42").unwrap();
        assert_eq!(m.component, "thread");
        assert_eq!(m.captures, vec![("id".to_string(), "42".to_string())]);
        assert_eq!(
            r.route("/api/threads/42/messages").unwrap().component,
            "msgs"
        );
        assert_eq!(r.route("/api/threads/42/other").unwrap().component, "api");
        let m = r.route("/static/css/site.css").unwrap();
        assert_eq!(
            (
                m.component.as_str(),
                m.path_info.as_str(),
                m.component_route()
            ),
            ("files", "/css/site.css", "/static")
        );
        assert_eq!(r.route("/static").unwrap().component, "files");
        assert_eq!(r.route("/elsewhere").unwrap().component, "root");
        assert_eq!(r.route("/").unwrap().path_info, "/");
    }

    // Without a catch-all, unknown paths do not match; a duplicate route replaces the earlier one.
    #[test]
    fn no_match_and_duplicates() {
        let r = Router::build([("a", "/x"), ("b", "/x")]).unwrap();
        assert_eq!(r.route("/x").unwrap().component, "b");
        assert!(r.route("/y").is_none());
    }
}
