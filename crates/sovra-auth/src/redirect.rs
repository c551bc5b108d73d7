//! Which `redirect_to` URLs are allowed: `auth.redirect_urls` patterns
//! matched against the parsed URL, with GoTrue's glob semantics.
//!
//! GoTrue compiles each pattern with gobwas/glob and the separators `.` and
//! `/`: `*` matches a run of characters without `.` or `/` (within one host
//! label or path segment), `**` matches any run. GoTrue matches the whole URL
//! text, so a `*` in the host also matches `?`, `#`, `@`, `:` or `\` and a
//! pattern such as `https://*-team.vercel.app/**` admits
//! `https://evil?-team.vercel.app/`. Sovra matches the same globs, but on the
//! parts of a strictly parsed URL:
//!
//! - the scheme is compared exactly (case-insensitively);
//! - userinfo (`user@`) is refused, in the candidate and in the pattern;
//! - the host is lower-cased and may only hold letters, digits, `-`, `_` and
//!   `.` (or be a bracketed IPv6 literal, compared exactly): `*` matches
//!   within one label, `**` across labels, and neither can leave the host;
//! - the port is matched on its own (`http://localhost:*/**` is allowed);
//! - the path is matched on its own: `*` within one segment, `**` across;
//! - the candidate's query and fragment are never matched by a wildcard:
//!   they are carried along unchanged (a pattern may not contain them);
//! - backslashes, control characters, spaces, percent-encoding outside the
//!   path, `%2f`/`%5c` or `.`/`..` segments in the path, and URLs longer than
//!   [`MAX_URL_LEN`] are refused.
//!
//! Matching is a simulation of the pattern's automaton over the text: time is
//! O(pattern × text), with no backtracking, whatever the input.
//!
//! This module is pure: no IO.

/// Longest `redirect_to` considered (longer ones fall back to the site URL).
pub const MAX_URL_LEN: usize = 2048;

/// One token of a compiled glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    /// `*`: any run without a separator.
    Star,
    /// `**`: any run at all.
    Any,
}

/// A glob over one URL part.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    toks: Vec<Tok>,
}

impl Glob {
    fn compile(text: &str) -> Glob {
        let bytes = text.as_bytes();
        let mut toks = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                let mut run = 0;
                while i < bytes.len() && bytes[i] == b'*' {
                    run += 1;
                    i += 1;
                }
                toks.push(if run >= 2 { Tok::Any } else { Tok::Star });
            } else {
                toks.push(Tok::Byte(bytes[i]));
                i += 1;
            }
        }
        Glob { toks }
    }

    /// Whether the glob matches all of `text`, `*` stopping at `.` and `/`.
    /// A set of live pattern positions is advanced one byte at a time, so the
    /// cost is O(tokens × bytes) whatever the input.
    fn matches(&self, text: &[u8]) -> bool {
        let n = self.toks.len();
        let mut live = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        live[0] = true;
        self.close(&mut live);
        for &c in text {
            next.iter_mut().for_each(|b| *b = false);
            let mut any = false;
            for (i, tok) in self.toks.iter().enumerate() {
                if !live[i] {
                    continue;
                }
                match *tok {
                    Tok::Byte(b) if b == c => {
                        next[i + 1] = true;
                        any = true;
                    }
                    Tok::Byte(_) => {}
                    Tok::Star if c != b'.' && c != b'/' => {
                        next[i] = true;
                        any = true;
                    }
                    Tok::Star => {}
                    Tok::Any => {
                        next[i] = true;
                        any = true;
                    }
                }
            }
            if !any {
                return false;
            }
            std::mem::swap(&mut live, &mut next);
            self.close(&mut live);
        }
        live[n]
    }

    /// Wildcards may match nothing: a live wildcard makes the next position
    /// live too.
    fn close(&self, live: &mut [bool]) {
        for (i, tok) in self.toks.iter().enumerate() {
            if live[i] && matches!(tok, Tok::Star | Tok::Any) {
                live[i + 1] = true;
            }
        }
    }

    fn is_literal(&self) -> bool {
        self.toks.iter().all(|t| matches!(t, Tok::Byte(_)))
    }
}

/// A URL split into the parts that are matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts<'a> {
    pub scheme: String,
    /// Lower-cased; `[…]` for IPv6 literals.
    pub host: String,
    pub port: &'a str,
    /// `/` when the URL has no path.
    pub path: &'a str,
}

/// Why a URL or a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    TooLong,
    /// Control characters, spaces, backslashes.
    BadCharacter,
    NoScheme,
    Userinfo,
    BadHost,
    BadPort,
    BadPath,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::TooLong => "longer than 2048 characters",
            Refused::BadCharacter => "contains a space, control character or backslash",
            Refused::NoScheme => "needs a scheme followed by ://",
            Refused::Userinfo => "must not contain user information (user@)",
            Refused::BadHost => "has an invalid host",
            Refused::BadPort => "has an invalid port",
            Refused::BadPath => "has an invalid path",
        })
    }
}

/// Splits `url` into scheme, host, port and path (query and fragment are
/// dropped). With `pattern`, `*` is allowed where wildcards may stand.
fn split(url: &str, pattern: bool) -> Result<Parts<'_>, Refused> {
    if url.len() > MAX_URL_LEN {
        return Err(Refused::TooLong);
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\' || b >= 0x80)
    {
        return Err(Refused::BadCharacter);
    }
    let (scheme, rest) = url.split_once("://").ok_or(Refused::NoScheme)?;
    let mut chars = scheme.bytes();
    if !chars.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(Refused::NoScheme);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(Refused::Userinfo);
    }
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    if pattern && path_end != tail.len() {
        // Patterns never constrain the query or fragment.
        return Err(Refused::BadPath);
    }
    let path = &tail[..path_end];
    let (host, port) = match authority.strip_prefix('[') {
        Some(inner) => {
            let close = inner.find(']').ok_or(Refused::BadHost)?;
            let literal = &inner[..close];
            if literal.is_empty()
                || !literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            {
                return Err(Refused::BadHost);
            }
            let after = &inner[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(Refused::BadHost),
            };
            (format!("[{}]", literal.to_ascii_lowercase()), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let ok_byte = |b: u8| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'_' | b'.')
                    || (pattern && b == b'*')
            };
            if host.is_empty() || !host.bytes().all(ok_byte) || host.split('.').any(str::is_empty) {
                return Err(Refused::BadHost);
            }
            (host.to_ascii_lowercase(), port)
        }
    };
    let port = match port {
        None => "",
        Some(port)
            if !port.is_empty()
                && port.len() <= 5
                && port
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (pattern && b == b'*')) =>
        {
            port
        }
        Some(_) => return Err(Refused::BadPort),
    };
    let path = if path.is_empty() { "/" } else { path };
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || path.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err(Refused::BadPath);
    }
    Ok(Parts {
        scheme: scheme.to_ascii_lowercase(),
        host,
        port,
        path,
    })
}

/// Parses a candidate `redirect_to`.
pub fn parse(url: &str) -> Result<Parts<'_>, Refused> {
    split(url, false)
}

/// One compiled `auth.redirect_urls` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    scheme: String,
    host: Glob,
    port: Glob,
    path: Glob,
}

impl Pattern {
    /// Compiles `pattern`, or says why it cannot be one.
    pub fn compile(pattern: &str) -> Result<Pattern, Refused> {
        let trimmed = pattern.trim();
        let parts = split(trimmed, true)?;
        // `myapp://**` (no path): GoTrue's `**` also covers any path.
        let has_path = trimmed
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        let path = if !has_path && parts.host.ends_with("**") {
            "/**"
        } else {
            parts.path
        };
        let host = Glob::compile(&parts.host);
        if parts.host.starts_with('[') && !host.is_literal() {
            return Err(Refused::BadHost);
        }
        Ok(Pattern {
            scheme: parts.scheme,
            host,
            port: Glob::compile(parts.port),
            path: Glob::compile(path),
        })
    }

    /// Whether the candidate URL is allowed by this pattern.
    pub fn matches(&self, url: &str) -> bool {
        let Ok(parts) = parse(url) else {
            return false;
        };
        self.matches_parts(&parts)
    }

    /// Whether already parsed parts are allowed by this pattern.
    pub fn matches_parts(&self, parts: &Parts<'_>) -> bool {
        parts.scheme == self.scheme
            && self.host.matches(parts.host.as_bytes())
            && self.port.matches(parts.port.as_bytes())
            && self.path.matches(parts.path.as_bytes())
    }
}

/// Whether `url` is `site` or below it: same scheme, host and port, and a
/// path that is the site's path or under it.
pub fn under_site(site: &str, url: &str) -> bool {
    let (Ok(site_parts), Ok(parts)) = (parse(site), parse(url)) else {
        return false;
    };
    let base = site_parts.path.trim_end_matches('/');
    site_parts.scheme == parts.scheme
        && site_parts.host == parts.host
        && site_parts.port == parts.port
        && (parts.path == base
            || parts
                .path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(pattern: &str, url: &str) -> bool {
        Pattern::compile(pattern).unwrap().matches(url)
    }

    const PREVIEW: &str = "https://*-team.vercel.app/**";

    #[test]
    fn preview_deployments_are_allowed() {
        assert!(allowed(PREVIEW, "https://my-app-git-main-team.vercel.app/"));
        assert!(allowed(PREVIEW, "https://x-team.vercel.app"));
        assert!(allowed(PREVIEW, "https://x-team.vercel.app/auth/callback"));
        assert!(allowed(
            PREVIEW,
            "https://x-team.vercel.app/auth/callback?next=/account#top"
        ));
        assert!(allowed(PREVIEW, "HTTPS://X-Team.Vercel.App/a/b/c"));
    }

    #[test]
    fn attack_urls_are_refused() {
        for url in [
            "https://evil.com?-team.vercel.app/",
            "https://evil.com#-team.vercel.app/",
            "https://evil.com@x-team.vercel.app/",
            "https://evil@x-team.vercel.app/",
            "https://user:pw@x-team.vercel.app/",
            "https://x-team.vercel.app@evil.com/",
            "https://evil.com/-team.vercel.app/",
            "https://evil.com.x-team.vercel.app/",
            "https://a.b-team.vercel.app/",
            "https://evil\\-team.vercel.app/",
            "https://evil.com\\@x-team.vercel.app/",
            "https://evil%2ecom-team.vercel.app/",
            "https://evil%40x-team.vercel.app/",
            "https://x-team.vercel.app.evil.com/",
            "https://x-team.vercel.app:443@evil.com/",
            "https://x-team.vercel.app:8443/",
            "http://x-team.vercel.app/",
            "https://2130706433?-team.vercel.app/",
            "https://x-team.vercel.app/a%2f..%2f",
            "https://x-team.vercel.app/../x",
            "https://x-team.vercel.app/\t",
            "https://x-team.vercel.app/ ",
            "https:/x-team.vercel.app/",
            "//x-team.vercel.app/",
            "javascript://x-team.vercel.app/%0aalert(1)",
            "https://-team.vercel.app./",
            "https://x-team.vercel.app./",
        ] {
            assert!(!allowed(PREVIEW, url), "{url} must be refused");
        }
    }

    #[test]
    fn star_stays_in_one_label_or_segment() {
        assert!(allowed(
            "https://*.example.com/cb",
            "https://app.example.com/cb"
        ));
        assert!(!allowed(
            "https://*.example.com/cb",
            "https://a.b.example.com/cb"
        ));
        assert!(allowed(
            "https://**.example.com/cb",
            "https://a.b.example.com/cb"
        ));
        assert!(!allowed(
            "https://*.example.com/cb",
            "https://evil.com/x.example.com/cb"
        ));
        assert!(!allowed(
            "http://localhost:3000/*",
            "http://localhost:3000/a/b"
        ));
        assert!(allowed(
            "http://localhost:3000/*",
            "http://localhost:3000/a"
        ));
        // GoTrue's separators include `.`: `*` does not cross it in paths.
        assert!(!allowed(
            "http://localhost:3000/*",
            "http://localhost:3000/a.html"
        ));
        assert!(allowed(
            "http://localhost:3000/**",
            "http://localhost:3000/a.b/c"
        ));
        assert!(allowed("http://localhost:3000/**", "http://localhost:3000"));
        assert!(allowed("http://localhost:*/**", "http://localhost:5173/x"));
        assert!(!allowed(
            "http://localhost:*/**",
            "http://localhost.evil.com:5173/x"
        ));
        assert!(allowed("myapp://**", "myapp://login-callback/x/y"));
        assert!(allowed(
            "io.supabase.app://login-callback/",
            "io.supabase.app://login-callback/"
        ));
        assert!(!allowed("myapp://**", "otherapp://login-callback"));
        assert!(allowed("http://[::1]:3000/**", "http://[::1]:3000/cb"));
        assert!(!allowed("http://[::1]:3000/**", "http://[::2]:3000/cb"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for pattern in [
            "https://user@*.example.com/**",
            "no-scheme.example.com/**",
            "https://*.example.com/cb?x=*",
            "https://*.example.com/cb#*",
            "https://[*]/",
            "https://exa mple.com/",
        ] {
            assert!(Pattern::compile(pattern).is_err(), "{pattern}");
        }
    }

    #[test]
    fn site_url_prefix() {
        let site = "https://app.example.com/base";
        assert!(under_site(site, "https://app.example.com/base"));
        assert!(under_site(site, "https://app.example.com/base/cb?x=1#y"));
        assert!(!under_site(site, "https://app.example.com/basement"));
        assert!(!under_site(site, "https://app.example.com.evil.com/base"));
        assert!(!under_site(site, "https://app.example.com@evil.com/base"));
        assert!(!under_site(site, "https://app.example.com:8080/base"));
        assert!(under_site("http://localhost:3000", "http://localhost:3000"));
        assert!(under_site(
            "http://localhost:3000/",
            "http://localhost:3000/x"
        ));
        assert!(!under_site(
            "http://localhost:3000",
            "http://localhost:30001/"
        ));
    }

    #[test]
    fn pathological_input_completes() {
        // Exponential for a backtracking matcher: many wildcards against a
        // long run that almost matches.
        let pattern = format!("https://x/{}b", "*a".repeat(500));
        let glob = Pattern::compile(&pattern).unwrap();
        let url = format!("https://x/{}", "a".repeat(MAX_URL_LEN - 20));
        assert!(!glob.matches(&url));
        let pattern = format!("https://x/{}b", "**a".repeat(500));
        let glob = Pattern::compile(&pattern).unwrap();
        assert!(!glob.matches(&url));
        let host = format!("https://{}.com/", "*a".repeat(400));
        let glob = Pattern::compile(&host).unwrap();
        let url = format!("https://{}.org/", "a".repeat(1500));
        assert!(!glob.matches(&url));
    }

    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        #[test]
        fn fuzz_redirect_match(pattern in ".{0,80}", url in ".{0,200}") {
            if let Ok(p) = Pattern::compile(&pattern) {
                let _ = p.matches(&url);
            }
            let _ = under_site(&pattern, &url);
        }

        #[test]
        fn fuzz_redirect_match_near_valid(
            label in "[a-z0-9*-]{0,12}",
            inject in prop::sample::select(vec!["", "?", "#", "@", ".", "/", "\\", "%2e", "%40", ":", "..", " "]),
            tail in "[a-z/?#.@:%-]{0,20}",
        ) {
            let url = format!("https://{label}{inject}-team.vercel.app/{tail}");
            let pattern = Pattern::compile(PREVIEW).unwrap();
            if pattern.matches(&url) {
                // Whatever matched, the host really is a preview host.
                let parts = parse(&url).unwrap();
                prop_assert!(parts.host.ends_with("-team.vercel.app"));
                prop_assert!(!parts.host[..parts.host.len() - "-team.vercel.app".len()].contains('.'));
                prop_assert!(parts.port.is_empty());
                prop_assert_eq!(parts.scheme.as_str(), "https");
            }
        }
    }
}
