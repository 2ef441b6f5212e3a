//! Turns a request line into a route: `/sync/{method}`, `/msync/{method}`
//! or `/health`, under an optional base path. All routing decisions live in
//! this one function so that a newcomer can see every URL the server answers.

use std::fmt;

/// Methods of the collection protocol (`/sync/…`) after login, spelled as
/// on the wire. Login itself (`/sync/hostKey`) is [`Route::HostKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMethod {
    Meta,
    Start,
    ApplyGraves,
    ApplyChanges,
    Chunk,
    ApplyChunk,
    SanityCheck2,
    Finish,
    Abort,
    Upload,
    Download,
}

impl SyncMethod {
    const ALL: [(&'static str, SyncMethod); 11] = [
        ("meta", SyncMethod::Meta),
        ("start", SyncMethod::Start),
        ("applyGraves", SyncMethod::ApplyGraves),
        ("applyChanges", SyncMethod::ApplyChanges),
        ("chunk", SyncMethod::Chunk),
        ("applyChunk", SyncMethod::ApplyChunk),
        ("sanityCheck2", SyncMethod::SanityCheck2),
        ("finish", SyncMethod::Finish),
        ("abort", SyncMethod::Abort),
        ("upload", SyncMethod::Upload),
        ("download", SyncMethod::Download),
    ];

    pub fn name(self) -> &'static str {
        lookup_name(&Self::ALL, self)
    }

    /// The steps of a normal sync after `start`: they need the sync that
    /// `start` began for this session.
    pub fn continues_a_sync(self) -> bool {
        matches!(
            self,
            SyncMethod::ApplyGraves
                | SyncMethod::ApplyChanges
                | SyncMethod::Chunk
                | SyncMethod::ApplyChunk
                | SyncMethod::SanityCheck2
                | SyncMethod::Finish
        )
    }
}

/// Methods of the media protocol (`/msync/…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaMethod {
    Begin,
    MediaChanges,
    UploadChanges,
    DownloadFiles,
    MediaSanity,
}

impl MediaMethod {
    const ALL: [(&'static str, MediaMethod); 5] = [
        ("begin", MediaMethod::Begin),
        ("mediaChanges", MediaMethod::MediaChanges),
        ("uploadChanges", MediaMethod::UploadChanges),
        ("downloadFiles", MediaMethod::DownloadFiles),
        ("mediaSanity", MediaMethod::MediaSanity),
    ];

    pub fn name(self) -> &'static str {
        lookup_name(&Self::ALL, self)
    }
}

fn lookup_name<T: PartialEq + Copy>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: a short page for people who open the address in a browser.
    Index,
    Health,
    /// `/sync/hostKey`: login, the one request answered before authentication.
    HostKey,
    /// `GET /metrics`: counters for Prometheus, answered only when switched on.
    Metrics,
    Sync(SyncMethod),
    Media(MediaMethod),
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Index => f.write_str("/"),
            Route::Health => f.write_str("/health"),
            Route::HostKey => f.write_str("/sync/hostKey"),
            Route::Metrics => f.write_str("/metrics"),
            Route::Sync(m) => write!(f, "/sync/{}", m.name()),
            Route::Media(m) => write!(f, "/msync/{}", m.name()),
        }
    }
}

/// Why a request has no route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// Right path, wrong HTTP method; carries the `Allow` header value.
    MethodNotAllowed(&'static str),
    /// `/sync/x` or `/msync/x` with a method name that does not exist.
    UnknownMethod(String),
}

/// The HTTP methods routing cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Post,
    Other,
}

/// Routes `url` (path plus optional query). Repeated slashes are folded and
/// `base_path` (normalised, e.g. `/anki/`) is stripped when present, so both
/// `/anki/sync/meta` and `/sync/meta` reach `meta`.
pub fn route(verb: Verb, url: &str, base_path: &str) -> Result<Route, RouteError> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let base: Vec<&str> = base_path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = if !base.is_empty() && segments.starts_with(&base) {
        &segments[base.len()..]
    } else {
        &segments[..]
    };
    match rest {
        [] => match verb {
            Verb::Get | Verb::Head => Ok(Route::Index),
            _ => Err(RouteError::MethodNotAllowed("GET, HEAD")),
        },
        ["health"] => match verb {
            Verb::Get | Verb::Head => Ok(Route::Health),
            _ => Err(RouteError::MethodNotAllowed("GET, HEAD")),
        },
        ["sync", "hostKey"] => {
            require_post(verb)?;
            Ok(Route::HostKey)
        }
        ["metrics"] => match verb {
            Verb::Get | Verb::Head => Ok(Route::Metrics),
            _ => Err(RouteError::MethodNotAllowed("GET, HEAD")),
        },
        ["sync", name] => {
            let method = find(&SyncMethod::ALL, name)?;
            require_post(verb)?;
            Ok(Route::Sync(method))
        }
        ["msync", name] => {
            let method = find(&MediaMethod::ALL, name)?;
            if method == MediaMethod::Begin && verb == Verb::Get {
                return Ok(Route::Media(method));
            }
            require_post(verb).map_err(|_| match method {
                MediaMethod::Begin => RouteError::MethodNotAllowed("GET, POST"),
                _ => RouteError::MethodNotAllowed("POST"),
            })?;
            Ok(Route::Media(method))
        }
        _ => Err(RouteError::NotFound),
    }
}

fn find<T: Copy>(table: &[(&'static str, T)], name: &str) -> Result<T, RouteError> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .ok_or_else(|| RouteError::UnknownMethod(name.to_string()))
}

fn require_post(verb: Verb) -> Result<(), RouteError> {
    if verb == Verb::Post {
        Ok(())
    } else {
        Err(RouteError::MethodNotAllowed("POST"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_method_name() {
        for (name, m) in SyncMethod::ALL {
            assert_eq!(
                route(Verb::Post, &format!("/sync/{name}"), "/"),
                Ok(Route::Sync(m))
            );
            assert_eq!(m.name(), name);
        }
        assert_eq!(route(Verb::Post, "/sync/hostKey", "/"), Ok(Route::HostKey));
        assert_eq!(Route::HostKey.to_string(), "/sync/hostKey");
        for (name, m) in MediaMethod::ALL {
            assert_eq!(
                route(Verb::Post, &format!("/msync/{name}"), "/"),
                Ok(Route::Media(m))
            );
        }
    }

    #[test]
    fn health_and_methods() {
        assert_eq!(route(Verb::Get, "/health", "/"), Ok(Route::Health));
        assert_eq!(route(Verb::Head, "/health", "/"), Ok(Route::Health));
        assert_eq!(
            route(Verb::Post, "/health", "/"),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(
            route(Verb::Get, "/anki/metrics", "/anki/"),
            Ok(Route::Metrics)
        );
        assert_eq!(Route::Metrics.to_string(), "/metrics");
        assert_eq!(
            route(Verb::Post, "/metrics", "/"),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(
            route(Verb::Get, "/sync/meta", "/"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(Verb::Get, "/msync/begin?k=a&v=b", "/"),
            Ok(Route::Media(MediaMethod::Begin))
        );
    }

    #[test]
    fn unknown_paths_and_names() {
        assert_eq!(route(Verb::Get, "/", "/"), Ok(Route::Index));
        assert_eq!(route(Verb::Get, "/anki/", "/anki/"), Ok(Route::Index));
        assert_eq!(route(Verb::Get, "/other", "/"), Err(RouteError::NotFound));
        assert_eq!(route(Verb::Post, "/sync", "/"), Err(RouteError::NotFound));
        assert_eq!(
            route(Verb::Post, "/sync/meta/x", "/"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            route(Verb::Post, "/sync/Meta", "/"),
            Err(RouteError::UnknownMethod("Meta".into()))
        );
        // An unknown name is reported before the HTTP method is checked.
        assert_eq!(
            route(Verb::Get, "/sync/nosuch", "/"),
            Err(RouteError::UnknownMethod("nosuch".into()))
        );
    }

    #[test]
    fn duplicate_slashes_and_base_path() {
        assert_eq!(
            route(Verb::Post, "//sync//meta", "/"),
            Ok(Route::Sync(SyncMethod::Meta))
        );
        assert_eq!(
            route(Verb::Post, "/anki/sync/meta", "/anki/"),
            Ok(Route::Sync(SyncMethod::Meta))
        );
        assert_eq!(
            route(Verb::Post, "/sync/meta", "/anki/"),
            Ok(Route::Sync(SyncMethod::Meta))
        );
        assert_eq!(route(Verb::Get, "/a/b/health", "/a/b/"), Ok(Route::Health));
        assert_eq!(
            route(Verb::Post, "/other/sync/meta", "/anki/"),
            Err(RouteError::NotFound)
        );
    }
}
