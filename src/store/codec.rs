//! Append codecs: how a POSTed entry joins a representation, one rule per media type.
//!
//! Every representation is kept as an *open* rope plus a constant *suffix*: the
//! rendered body is `rope ++ suffix`. An append pushes bytes onto the rope, so the
//! suffix (`]` for a JSON array, `</feed>` for an Atom feed, nothing for raw bytes)
//! never has to be rewritten, and entries are shared segments, never copied into a
//! new body.
//!
//! | codec | PUT body | POST body | `bytes` range describes an append | `updated` fragment |
//! |---|---|---|---|---|
//! | raw (any type) | anything | bytes appended as-is | yes | the new bytes |
//! | JSON | any JSON value | one JSON value, appended as an element | no | `[e1,e2]` |
//! | Atom | a `<feed>` document | one `<entry>` | no | feed head + new entries + `</feed>` |

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::body::{Body, Rope};

/// Why an entry or a representation was refused by its codec.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("the resource is JSON but not an array, so entries cannot be appended to it")]
    NotAnArray,
    #[error("invalid Atom: {0}")]
    InvalidAtom(&'static str),
}

impl CodecError {
    pub fn status(&self) -> u16 {
        match self {
            CodecError::NotAnArray => 409,
            CodecError::InvalidJson(_) | CodecError::InvalidAtom(_) => 400,
        }
    }
}

/// Which codec a media type gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecKind {
    Raw,
    Json,
    Atom,
}

impl CodecKind {
    /// `application/json` and any `+json` type are JSON; `application/atom+xml` is Atom;
    /// everything else is raw bytes.
    pub fn for_media_type(content_type: &[u8]) -> CodecKind {
        let essence = media_type_essence(content_type);
        if essence.eq_ignore_ascii_case(b"application/json") || ends_with_ci(essence, b"+json") {
            CodecKind::Json
        } else if essence.eq_ignore_ascii_case(b"application/atom+xml") {
            CodecKind::Atom
        } else {
            CodecKind::Raw
        }
    }
}

/// `type/subtype` without parameters or surrounding whitespace.
pub fn media_type_essence(content_type: &[u8]) -> &[u8] {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    crate::http::request::trim_ows(&content_type[..end])
}

fn ends_with_ci(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Per-codec state kept beside the rope.
#[derive(Clone, Debug)]
enum State {
    Raw,
    Json {
        /// Only arrays accept appends.
        array: bool,
        /// Whether the array has at least one element (the next append needs a comma).
        has_elements: bool,
    },
    Atom {
        /// Bytes of the rope before the first entry: the feed head, reused for fragments.
        head_len: u64,
    },
}

/// A stored representation: `rope ++ suffix`, plus codec state.
#[derive(Clone, Debug)]
pub struct Representation {
    rope: Rope,
    suffix: Bytes,
    state: State,
}

/// What an append did, for history and for the change event.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Rope length before the append: where a `bytes` range of the new data starts.
    pub offset: u64,
    /// Where the entry itself starts in the rope (after a separator such as `,`).
    pub entry_start: u64,
    /// The bytes pushed onto the rope (separator included).
    pub pushed: Bytes,
}

const ATOM_FEED_OPEN: &[u8] =
    b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n";
const ATOM_FEED_CLOSE: &[u8] = b"</feed>\n";

impl Representation {
    /// The representation a PUT creates or replaces with.
    pub fn from_put(kind: CodecKind, body: Bytes) -> Result<Representation, CodecError> {
        match kind {
            CodecKind::Raw => Ok(Representation {
                rope: Rope::from_bytes(body),
                suffix: Bytes::new(),
                state: State::Raw,
            }),
            CodecKind::Json => {
                validate_json(&body)?;
                let trimmed_end =
                    body.len() - body.iter().rev().take_while(|b| is_json_ws(**b)).count();
                let first = body.iter().position(|b| !is_json_ws(*b));
                if first.map(|i| body[i]) == Some(b'[')
                    && trimmed_end > 0
                    && body[trimmed_end - 1] == b']'
                {
                    let close = trimmed_end - 1;
                    let inner_start = first.map_or(0, |i| i + 1);
                    let has_elements = body[inner_start..close].iter().any(|b| !is_json_ws(*b));
                    Ok(Representation {
                        rope: Rope::from_bytes(body.slice(..close)),
                        suffix: body.slice(close..),
                        state: State::Json {
                            array: true,
                            has_elements,
                        },
                    })
                } else {
                    Ok(Representation {
                        rope: Rope::from_bytes(body),
                        suffix: Bytes::new(),
                        state: State::Json {
                            array: false,
                            has_elements: false,
                        },
                    })
                }
            }
            CodecKind::Atom => {
                let root = check_xml(&body)?;
                if root != b"feed" {
                    return Err(CodecError::InvalidAtom(
                        "the document's root element must be <feed>",
                    ));
                }
                let close = memchr::memmem::rfind(&body, b"</feed>").ok_or(
                    CodecError::InvalidAtom("a feed document must end with </feed>"),
                )?;
                if memchr::memmem::find(&body, b"<feed").is_none() {
                    return Err(CodecError::InvalidAtom(
                        "a feed document must contain <feed>",
                    ));
                }
                let head_len = memchr::memmem::find(&body[..close], b"<entry").unwrap_or(close);
                Ok(Representation {
                    rope: Rope::from_bytes(body.slice(..close)),
                    suffix: body.slice(close..),
                    state: State::Atom {
                        head_len: head_len as u64,
                    },
                })
            }
        }
    }

    /// The representation a POST creates when the resource is absent: a JSON array of
    /// one element, a one-entry feed, or the raw bytes.
    pub fn from_first_entry(
        kind: CodecKind,
        entry: Bytes,
    ) -> Result<(Representation, Appended), CodecError> {
        let mut rep = match kind {
            CodecKind::Raw => Representation {
                rope: Rope::new(),
                suffix: Bytes::new(),
                state: State::Raw,
            },
            CodecKind::Json => Representation {
                rope: Rope::from_bytes(Bytes::from_static(b"[")),
                suffix: Bytes::from_static(b"]"),
                state: State::Json {
                    array: true,
                    has_elements: false,
                },
            },
            CodecKind::Atom => Representation {
                rope: Rope::from_bytes(Bytes::from_static(ATOM_FEED_OPEN)),
                suffix: Bytes::from_static(ATOM_FEED_CLOSE),
                state: State::Atom {
                    head_len: ATOM_FEED_OPEN.len() as u64,
                },
            },
        };
        let appended = rep.append(entry)?;
        Ok((rep, appended))
    }

    /// Appends one entry by the codec's rule. On error nothing changed.
    pub fn append(&mut self, entry: Bytes) -> Result<Appended, CodecError> {
        let offset = self.rope.len();
        let (pushed, separator) = match &mut self.state {
            State::Raw => (entry, 0),
            State::Json {
                array,
                has_elements,
            } => {
                if !*array {
                    return Err(CodecError::NotAnArray);
                }
                validate_json(&entry)?;
                let value = trim_json_ws(&entry);
                let pushed = if *has_elements {
                    let mut b = BytesMut::with_capacity(value.len() + 1);
                    b.extend_from_slice(b",");
                    b.extend_from_slice(value);
                    (b.freeze(), 1)
                } else {
                    let start = value.as_ptr() as usize - entry.as_ptr() as usize;
                    (entry.slice(start..start + value.len()), 0)
                };
                *has_elements = true;
                pushed
            }
            State::Atom { .. } => (atom_entry(&entry)?, 0),
        };
        self.rope.push(pushed.clone());
        Ok(Appended {
            offset,
            entry_start: offset + separator,
            pushed,
        })
    }

    /// The full rendered body.
    pub fn body(&self) -> Body {
        let mut b = self.rope.body().clone();
        b.push(self.suffix.clone());
        b
    }

    pub fn len(&self) -> u64 {
        self.rope.len() + self.suffix.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a `bytes N-` range can describe an append (only for raw bytes: the other
    /// codecs insert before their suffix).
    pub fn byte_ranges_describe_appends(&self) -> bool {
        matches!(self.state, State::Raw)
    }

    /// The body of an `updated` range answer: the entries from rope offset
    /// `entry_start` to the end, wrapped by the codec.
    pub fn fragment(&self, entry_start: u64) -> Body {
        let entries = self.rope.body().slice(entry_start, u64::MAX);
        self.wrap_fragment(entries)
    }

    /// Wraps entry bytes (as pushed, without a leading separator) into a fragment.
    pub fn wrap_fragment(&self, entries: Body) -> Body {
        match self.state {
            State::Raw => entries,
            State::Json { .. } => {
                let mut b = Body::new();
                b.push_static(b"[");
                b.extend(&entries);
                b.push_static(b"]");
                b
            }
            State::Atom { head_len } => {
                let mut b = self.rope.body().slice(0, head_len);
                b.extend(&entries);
                b.push(self.suffix.clone());
                b
            }
        }
    }

    /// The last `n` bytes of the open rope (for boundary-seam checks).
    pub fn rope_tail(&self, n: usize) -> Vec<u8> {
        self.rope.tail_bytes(n)
    }
}

/// Checks that `doc` is one well-formed XML element (after an optional declaration,
/// comments and whitespace); returns the root element's local name.
fn check_xml(doc: &[u8]) -> Result<Vec<u8>, CodecError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(doc);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut root: Option<Vec<u8>> = None;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|_| CodecError::InvalidAtom("the XML is not well-formed"))?;
        match event {
            Event::Start(e) => {
                if depth == 0 {
                    if root.is_some() {
                        return Err(CodecError::InvalidAtom("more than one root element"));
                    }
                    root = Some(e.local_name().as_ref().to_vec());
                }
                depth += 1;
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Empty(e) if depth == 0 => {
                if root.is_some() {
                    return Err(CodecError::InvalidAtom("more than one root element"));
                }
                root = Some(e.local_name().as_ref().to_vec());
            }
            Event::Text(t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(CodecError::InvalidAtom("text outside the root element"));
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if depth != 0 {
        return Err(CodecError::InvalidAtom("an element is not closed"));
    }
    root.ok_or(CodecError::InvalidAtom("no root element"))
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim_json_ws(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_json_ws(*b)).unwrap_or(s.len());
    let end = s.len()
        - s[start..]
            .iter()
            .rev()
            .take_while(|b| is_json_ws(**b))
            .count();
    &s[start..end]
}

fn validate_json(body: &[u8]) -> Result<(), CodecError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| CodecError::InvalidJson(e.to_string()))
}

/// An Atom entry: optional XML declaration, then one `<entry ...>...</entry>` element.
/// The declaration is dropped (the entry is embedded in a feed); a newline follows.
fn atom_entry(entry: &Bytes) -> Result<Bytes, CodecError> {
    let mut s: &[u8] = trim_json_ws(entry);
    if s.starts_with(b"<?xml") {
        let end = memchr::memmem::find(s, b"?>")
            .ok_or(CodecError::InvalidAtom("unterminated XML declaration"))?;
        s = trim_json_ws(&s[end + 2..]);
    }
    let opens =
        s.starts_with(b"<entry") && matches!(s.get(6), Some(b'>' | b' ' | b'\t' | b'\r' | b'\n'));
    if !opens || !s.ends_with(b"</entry>") {
        return Err(CodecError::InvalidAtom(
            "a POST to an Atom feed must be one <entry> element",
        ));
    }
    if check_xml(s)? != b"entry" {
        return Err(CodecError::InvalidAtom(
            "a POST to an Atom feed must be one <entry> element",
        ));
    }
    let mut b = BytesMut::with_capacity(s.len() + 1);
    b.extend_from_slice(s);
    b.extend_from_slice(b"\n");
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn text(body: Body) -> String {
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[test]
    fn kinds() {
        assert_eq!(
            CodecKind::for_media_type(b"application/json; charset=utf-8"),
            CodecKind::Json
        );
        assert_eq!(
            CodecKind::for_media_type(b"application/ld+JSON"),
            CodecKind::Json
        );
        assert_eq!(
            CodecKind::for_media_type(b" application/atom+xml "),
            CodecKind::Atom
        );
        assert_eq!(CodecKind::for_media_type(b"text/plain"), CodecKind::Raw);
        assert_eq!(CodecKind::for_media_type(b""), CodecKind::Raw);
    }

    #[test]
    fn raw_appends() {
        let mut r = Representation::from_put(CodecKind::Raw, b("Hello World!")).unwrap();
        let a = r.append(b("How are you?")).unwrap();
        assert_eq!((a.offset, a.entry_start), (12, 12));
        assert_eq!(text(r.body()), "Hello World!How are you?");
        assert_eq!(text(r.fragment(12)), "How are you?");
        assert!(r.byte_ranges_describe_appends());
    }

    #[test]
    fn json_arrays() {
        let mut r = Representation::from_put(CodecKind::Json, b(" [1, 2] \n")).unwrap();
        assert_eq!(text(r.body()), " [1, 2] \n");
        let a = r.append(b(" {\"a\": 3}\n")).unwrap();
        assert_eq!(text(r.body()), " [1, 2,{\"a\": 3}] \n");
        assert_eq!(text(r.fragment(a.entry_start)), "[{\"a\": 3}]");
        let a2 = r.append(b("4")).unwrap();
        assert_eq!(text(r.fragment(a.entry_start)), "[{\"a\": 3},4]");
        assert_eq!(text(r.fragment(a2.entry_start)), "[4]");
        assert!(!r.byte_ranges_describe_appends());

        let mut empty = Representation::from_put(CodecKind::Json, b("[ ]")).unwrap();
        empty.append(b("true")).unwrap();
        assert_eq!(text(empty.body()), "[ true]");
        let parsed: serde_json::Value = serde_json::from_slice(&empty.body().to_vec()).unwrap();
        assert_eq!(parsed, serde_json::json!([true]));
    }

    #[test]
    fn json_errors_change_nothing() {
        let mut r = Representation::from_put(CodecKind::Json, b("[1]")).unwrap();
        assert!(matches!(
            r.append(b("{broken")),
            Err(CodecError::InvalidJson(_))
        ));
        assert!(matches!(
            r.append(b("1 2")),
            Err(CodecError::InvalidJson(_))
        ));
        assert_eq!(text(r.body()), "[1]");
        let mut obj = Representation::from_put(CodecKind::Json, b("{\"a\":1}")).unwrap();
        assert_eq!(obj.append(b("1")).unwrap_err(), CodecError::NotAnArray);
        assert_eq!(obj.append(b("1")).unwrap_err().status(), 409);
        assert!(Representation::from_put(CodecKind::Json, b("[1,")).is_err());
    }

    #[test]
    fn json_first_entry() {
        let (r, a) = Representation::from_first_entry(CodecKind::Json, b(" \"x\" ")).unwrap();
        assert_eq!(text(r.body()), "[\"x\"]");
        assert_eq!(a.entry_start, 1);
        assert_eq!(text(r.fragment(a.entry_start)), "[\"x\"]");
    }

    #[test]
    fn atom_feeds() {
        let (mut r, a) = Representation::from_first_entry(
            CodecKind::Atom,
            b("<?xml version=\"1.0\"?>\n<entry><title>a</title></entry>"),
        )
        .unwrap();
        let body = text(r.body());
        assert!(body.starts_with("<?xml"));
        assert!(body.ends_with("<entry><title>a</title></entry>\n</feed>\n"));
        let a2 = r.append(b("<entry><title>b</title></entry>")).unwrap();
        let frag = text(r.fragment(a2.entry_start));
        assert!(frag.contains("<feed"));
        assert!(frag.contains("<title>b</title>"));
        assert!(!frag.contains("<title>a</title>"));
        assert!(frag.ends_with("</feed>\n"));
        assert_eq!(
            text(r.fragment(a.entry_start)).matches("<entry>").count(),
            2
        );
        assert!(r.append(b("<feed/>")).is_err());
        assert!(r.append(b("<entry>x</entry><entry>y</entry>")).is_err());

        let put =
            "<feed xmlns=\"http://www.w3.org/2005/Atom\"><title>t</title><entry>1</entry></feed>";
        let mut p = Representation::from_put(CodecKind::Atom, b(put)).unwrap();
        let a3 = p.append(b("<entry>2</entry>")).unwrap();
        assert_eq!(
            text(p.fragment(a3.entry_start)),
            "<feed xmlns=\"http://www.w3.org/2005/Atom\"><title>t</title><entry>2</entry>\n</feed>"
        );
        assert!(Representation::from_put(CodecKind::Atom, b("<html/>")).is_err());
        assert!(
            Representation::from_put(CodecKind::Atom, b("<feed><entry></feed>")).is_err(),
            "not well-formed"
        );
        assert!(r.append(b("<entry><title>unclosed</entry>")).is_err());
        assert!(r.append(b("<entry/><entry/>")).is_err());
        assert!(r
            .append(b(
                "<entry xmlns=\"http://www.w3.org/2005/Atom\"><id>x</id></entry>"
            ))
            .is_ok());
    }
}
