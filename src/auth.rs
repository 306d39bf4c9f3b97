//! Authentication and authorisation (`--auth FILE`).
//!
//! The file is TOML. Anonymous clients, Basic users and Bearer tokens are each granted
//! `read` (GET/HEAD: plain reads, long polls, streams, `/subscribe` sub-requests) and/or
//! `write` (PUT/POST/DELETE, `/batch` sub-requests) on path prefixes:
//!
//! ```toml
//! realm = "quotes"                      # optional, default "halley"
//!
//! [anonymous]                           # optional: what needs no credentials
//! read = ["/public/"]
//!
//! [[user]]                              # Authorization: Basic
//! name = "feed"
//! password = "s3cret"                   # or password_sha256 = "<64 hex digits>"
//! read = ["/"]
//! write = ["/quotes/", "/tape"]
//!
//! [[token]]                             # Authorization: Bearer
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! read = ["/quotes/"]
//! ```
//!
//! A prefix matches every path that starts with it (`"/"` is everything; write
//! `"/quotes/"` rather than `"/quotes"` unless `/quotesX` should match too).
//!
//! Decision: a request the anonymous grants allow is allowed whatever credentials it
//! carries. Otherwise missing or wrong credentials are `401` (with a `WWW-Authenticate`
//! challenge for each scheme) and valid credentials without the grant are `403`.
//!
//! Secrets are compared as SHA-256 digests in constant time (every credential is
//! compared, so the time taken says nothing about which one matched), and are never
//! logged: nothing in this module formats a secret.

use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid auth file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct GrantsToml {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct UserToml {
    name: String,
    password: Option<String>,
    password_sha256: Option<String>,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TokenToml {
    token: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AuthToml {
    realm: Option<String>,
    #[serde(default)]
    anonymous: GrantsToml,
    #[serde(default)]
    user: Vec<UserToml>,
    #[serde(default)]
    token: Vec<TokenToml>,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No usable credentials: `401`.
    Unauthorized,
    /// Valid credentials without the grant: `403`.
    Forbidden,
}

#[derive(Debug, Clone, Default)]
struct Grants {
    read: Vec<String>,
    write: Vec<String>,
}

impl Grants {
    fn allows(&self, access: Access, path: &str) -> bool {
        let prefixes = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        prefixes.iter().any(|p| path.starts_with(p.as_str()))
    }
}

#[derive(Debug)]
struct Credential {
    /// SHA-256 of the user name (Basic) — empty for tokens.
    name: [u8; 32],
    secret: [u8; 32],
    grants: Grants,
}

/// The loaded access rules.
#[derive(Debug)]
pub struct Auth {
    anonymous: Grants,
    users: Vec<Credential>,
    tokens: Vec<Credential>,
    /// `WWW-Authenticate` lines for a 401, encoded once.
    challenge: Bytes,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compares two digests in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn check_prefixes(list: &[String], what: &str) -> Result<(), String> {
    match list.iter().find(|p| !p.starts_with('/')) {
        Some(bad) => Err(format!("{what}: prefix {bad:?} must start with '/'")),
        None => Ok(()),
    }
}

impl Auth {
    /// Reads and validates an auth file.
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Auth::parse(&text).map_err(|message| AuthError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses the TOML text of an auth file.
    pub fn parse(text: &str) -> Result<Auth, String> {
        let file: AuthToml = toml::from_str(text).map_err(|e| e.message().to_string())?;
        check_prefixes(&file.anonymous.read, "anonymous.read")?;
        check_prefixes(&file.anonymous.write, "anonymous.write")?;
        let secret = |plain: Option<String>,
                      hashed: Option<String>,
                      what: &str|
         -> Result<[u8; 32], String> {
            match (plain, hashed) {
                (Some(p), None) if !p.is_empty() => Ok(sha256(p.as_bytes())),
                (None, Some(h)) => {
                    hex32(&h).ok_or_else(|| format!("{what}: the sha256 must be 64 hex digits"))
                }
                (Some(_), Some(_)) => {
                    Err(format!("{what}: give the secret or its sha256, not both"))
                }
                _ => Err(format!("{what}: a non-empty secret is required")),
            }
        };
        let mut users = Vec::with_capacity(file.user.len());
        for (i, u) in file.user.into_iter().enumerate() {
            let what = format!("user #{} ({:?})", i + 1, u.name);
            if u.name.is_empty() || u.name.contains(':') {
                return Err(format!(
                    "{what}: the name must be non-empty and contain no ':'"
                ));
            }
            check_prefixes(&u.read, &what)?;
            check_prefixes(&u.write, &what)?;
            users.push(Credential {
                name: sha256(u.name.as_bytes()),
                secret: secret(u.password, u.password_sha256, &what)?,
                grants: Grants {
                    read: u.read,
                    write: u.write,
                },
            });
        }
        let mut tokens = Vec::with_capacity(file.token.len());
        for (i, t) in file.token.into_iter().enumerate() {
            let what = format!("token #{}", i + 1);
            check_prefixes(&t.read, &what)?;
            check_prefixes(&t.write, &what)?;
            tokens.push(Credential {
                name: [0; 32],
                secret: secret(t.token, t.token_sha256, &what)?,
                grants: Grants {
                    read: t.read,
                    write: t.write,
                },
            });
        }
        let realm = file.realm.unwrap_or_else(|| "halley".to_string());
        if realm.contains(['"', '\\', '\r', '\n']) {
            return Err("realm may not contain quotes, backslashes or line breaks".into());
        }
        let challenge = format!(
            "WWW-Authenticate: Basic realm=\"{realm}\", charset=\"UTF-8\"\r\nWWW-Authenticate: Bearer realm=\"{realm}\"\r\n"
        );
        Ok(Auth {
            anonymous: Grants {
                read: file.anonymous.read,
                write: file.anonymous.write,
            },
            users,
            tokens,
            challenge: Bytes::from(challenge),
        })
    }

    /// The `WWW-Authenticate` header lines of a `401`.
    pub fn challenge(&self) -> Bytes {
        self.challenge.clone()
    }

    /// Decides a request for `path` needing `access`, carrying `authorization` (the
    /// request's `Authorization` header, if any).
    pub fn check(&self, authorization: Option<&[u8]>, path: &str, access: Access) -> Decision {
        if self.anonymous.allows(access, path) {
            return Decision::Allow;
        }
        let Some(grants) = authorization.and_then(|v| self.identify(v)) else {
            return Decision::Unauthorized;
        };
        if grants.allows(access, path) {
            Decision::Allow
        } else {
            Decision::Forbidden
        }
    }

    /// The grants of the credentials in an `Authorization` value, if they are valid.
    fn identify(&self, value: &[u8]) -> Option<&Grants> {
        let value = crate::http::request::trim_ows(value);
        let sp = value.iter().position(|&b| b == b' ')?;
        let (scheme, rest) = value.split_at(sp);
        let rest = crate::http::request::trim_ows(rest);
        if scheme.eq_ignore_ascii_case(b"basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            let (name, password) = (sha256(&decoded[..colon]), sha256(&decoded[colon + 1..]));
            find(&self.users, |c| {
                ct_eq(&c.name, &name) & ct_eq(&c.secret, &password)
            })
        } else if scheme.eq_ignore_ascii_case(b"bearer") {
            let token = sha256(rest);
            find(&self.tokens, |c| ct_eq(&c.secret, &token))
        } else {
            None
        }
    }
}

/// The first credential matching, after comparing every one of them.
fn find(creds: &[Credential], matches: impl Fn(&Credential) -> bool) -> Option<&Grants> {
    let mut found = None;
    for c in creds {
        if matches(c) && found.is_none() {
            found = Some(&c.grants);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const FILE: &str = r#"
        [anonymous]
        read = ["/public/"]

        [[user]]
        name = "feed"
        password = "s3cret"
        read = ["/"]
        write = ["/quotes/"]

        [[user]]
        name = "reader"
        password_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        read = ["/quotes/"]

        [[token]]
        token = "tok-123"
        read = ["/tape"]
        write = ["/tape"]
    "#;

    fn basic(user: &str, pass: &str) -> Vec<u8> {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {enc}").into_bytes()
    }

    #[test]
    fn decisions() {
        let auth = Auth::parse(FILE).unwrap();
        use Access::*;
        use Decision::*;
        let check = |h: Option<&[u8]>, p, a| auth.check(h, p, a);
        assert_eq!(check(None, "/public/x", Read), Allow);
        assert_eq!(check(None, "/public/x", Write), Unauthorized);
        assert_eq!(check(None, "/quotes/A", Read), Unauthorized);
        assert_eq!(
            check(Some(&basic("feed", "s3cret")), "/quotes/A", Write),
            Allow
        );
        assert_eq!(
            check(Some(&basic("feed", "s3cret")), "/other", Write),
            Forbidden
        );
        assert_eq!(
            check(Some(&basic("feed", "wrong")), "/quotes/A", Read),
            Unauthorized
        );
        assert_eq!(
            check(Some(&basic("nobody", "s3cret")), "/quotes/A", Read),
            Unauthorized
        );
        // "test" hashes to the stored sha256 of user "reader".
        assert_eq!(
            check(Some(&basic("reader", "test")), "/quotes/A", Read),
            Allow
        );
        assert_eq!(
            check(Some(&basic("reader", "test")), "/tape", Read),
            Forbidden
        );
        assert_eq!(check(Some(b"Bearer tok-123"), "/tape", Write), Allow);
        assert_eq!(check(Some(b"bearer   tok-123 "), "/tape", Read), Allow);
        assert_eq!(check(Some(b"Bearer tok-124"), "/tape", Read), Unauthorized);
        assert_eq!(check(Some(b"Digest x"), "/tape", Read), Unauthorized);
        assert_eq!(
            check(Some(b"Basic !!!notbase64"), "/tape", Read),
            Unauthorized
        );
        assert_eq!(check(Some(b""), "/tape", Read), Unauthorized);
    }

    #[test]
    fn challenge_names_both_schemes() {
        let auth = Auth::parse("realm = \"q\"").unwrap();
        let c = String::from_utf8(auth.challenge().to_vec()).unwrap();
        assert!(c.contains("Basic realm=\"q\""));
        assert!(c.contains("Bearer realm=\"q\""));
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for (text, why) in [
            ("[[user]]\nname = \"a\"\nread = [\"/\"]", "secret"),
            ("[[user]]\nname = \"a:b\"\npassword = \"x\"", "':'"),
            ("[[token]]\ntoken_sha256 = \"abc\"", "64 hex"),
            ("[anonymous]\nread = [\"public\"]", "start with '/'"),
            ("[[token]]\ntoken = \"x\"\nbogus = 1", "unknown field"),
            (
                "[[token]]\ntoken = \"x\"\ntoken_sha256 = \"00\"",
                "not both",
            ),
        ] {
            let err = Auth::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let auth = Auth::parse(FILE).unwrap();
        let dump = format!("{auth:?}");
        assert!(!dump.contains("s3cret") && !dump.contains("tok-123"));
    }
}
