//! Routing: what a parsed request means and where it runs. Requests for resources of
//! this worker's shard run here, synchronously; the others become messages to the
//! owning worker. Long polls go to the wait machinery in [`super::Worker::start_poll`].

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::group::{GroupMode, SubSpec};
use super::mailbox::Msg;
use super::watch::WaitQuery;
use super::Worker;
use crate::auth::{Access, Decision};
use crate::http::accept::{negotiate_all, StreamForm};
use crate::http::multipart::{self, PartLimits, SubRequest};
use crate::http::range::{parse_range, RangeSpec};
use crate::http::request::{resource_path, Head, Method};
use crate::http::response::Reply;
use crate::store::WriteOp;
use crate::time::{parse_http_date, Timestamp};

/// Methods every resource supports.
pub const RESOURCE_ALLOW: &str = "GET, HEAD, PUT, POST, DELETE, OPTIONS";
/// Paths that are endpoints, not resources.
pub const RESERVED_PATHS: [&str; 2] = ["/subscribe", "/batch"];

/// What the connection does next with a request.
pub enum Step {
    /// Answer now.
    Reply(Reply),
    /// The owning worker will answer.
    Remote(oneshot::Receiver<Reply>),
    /// A long poll: answer now or park.
    Poll { path: Arc<str>, query: WaitQuery },
    /// A stream or a `/subscribe`: the connection becomes a group watching `subs`;
    /// `errors` are the answers of sub-requests that failed on their own.
    Group {
        mode: GroupMode,
        subs: Vec<SubSpec>,
        errors: Vec<Reply>,
    },
    /// A `/batch`: some answers known, the rest coming from their owners.
    Batch(PendingBatch),
}

/// One owner's share of a batch: the sub-request indices and their writes, in order.
type OwnerShare = (Vec<usize>, Vec<(Box<str>, WriteOp)>);

/// The answers of a `/batch`, in sub-request order, as they become known.
pub struct PendingBatch {
    pub replies: Vec<Option<Reply>>,
    /// For each remote owner: the indices of its sub-requests and its answers.
    pub remote: Vec<(Vec<usize>, oneshot::Receiver<Vec<Reply>>)>,
}

fn options(allow: &'static str) -> Reply {
    let mut r = Reply::new(204);
    r.allow = Some(allow);
    r
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = Reply::text(
        405,
        format_args!("method not allowed here; allowed: {allow}"),
    );
    r.allow = Some(allow);
    r
}

impl Worker {
    /// The access decision for a request (or sub-request) carrying `authorization`.
    fn authorize(&self, authorization: Option<&[u8]>, path: &str, access: Access) -> Decision {
        match &self.config().auth {
            None => Decision::Allow,
            Some(auth) => auth.check(authorization, path, access),
        }
    }

    /// The refusal for a denied request: `401` with the challenges, or `403`.
    fn refusal(&self, decision: Decision, path: &str) -> Option<Reply> {
        let (rejection, mut reply) = match decision {
            Decision::Allow => return None,
            Decision::Unauthorized => (
                crate::metrics::Rejection::Unauthorized,
                Reply::text(401, format_args!("credentials required for {path}")),
            ),
            Decision::Forbidden => (
                crate::metrics::Rejection::Forbidden,
                Reply::text(403, format_args!("these credentials may not access {path}")),
            ),
        };
        self.metrics().reject(rejection);
        if decision == Decision::Unauthorized {
            reply.extra = self.config().auth.as_ref().map(|a| a.challenge());
        }
        Some(reply)
    }

    /// The refusal of a request its head already decides (credentials), before any
    /// of its body is read.
    pub fn refuse_head(&self, head: &Head) -> Option<Reply> {
        let path = head.path();
        let access = match head.method {
            Method::Get | Method::Head => Access::Read,
            Method::Put | Method::Post | Method::Delete if !RESERVED_PATHS.contains(&path) => {
                Access::Write
            }
            _ => return None,
        };
        let decision = self.authorize(head.header("authorization"), path, access);
        self.refusal(decision, path)
    }

    /// Answers a request [`Worker::refuse_head`] let through.
    pub fn route(self: &Rc<Self>, head: &Head, body: Bytes) -> Step {
        let path = head.path();
        if path == "*" {
            return Step::Reply(options(RESOURCE_ALLOW));
        }
        if path == "/subscribe" && head.method == Method::Post {
            return self.route_subscribe(head, &body);
        }
        if path == "/batch" && head.method == Method::Post {
            return self.route_batch(head, &body);
        }
        if RESERVED_PATHS.contains(&path) {
            return Step::Reply(match head.method {
                Method::Options => options("POST, OPTIONS"),
                _ => method_not_allowed("POST, OPTIONS"),
            });
        }
        match head.method {
            Method::Other => Step::Reply(Reply::text(
                501,
                format_args!("method {} is not implemented", head.method_token()),
            )),
            Method::Subscribe => Step::Reply(Reply::text(501, "SUBSCRIBE is not implemented")),
            Method::Options => Step::Reply(options(RESOURCE_ALLOW)),
            Method::Get | Method::Head => self.route_read(head, path),
            Method::Put => self.route_write(
                path,
                WriteOp::Put {
                    content_type: content_type(head),
                    body,
                },
            ),
            Method::Post => self.route_write(
                path,
                WriteOp::Post {
                    content_type: content_type(head),
                    body,
                },
            ),
            Method::Delete => self.route_write(path, WriteOp::Delete),
        }
    }

    fn route_read(self: &Rc<Self>, head: &Head, path: &str) -> Step {
        let range = match head.header("range").map(parse_range).transpose() {
            Ok(r) => r.flatten(),
            Err(e) => return Step::Reply(Reply::text(400, format_args!("invalid Range: {e}"))),
        };
        let wma = match head
            .header("when-modified-after")
            .map(parse_http_date)
            .transpose()
        {
            Ok(t) => t,
            Err(e) => {
                return Step::Reply(Reply::text(
                    400,
                    format_args!("invalid When-Modified-After: {e}"),
                ))
            }
        };
        if head.method == Method::Get {
            if let Some(form) = negotiate_all(head.headers_named("accept")).stream {
                // A stream starts with what changed after T, or with the current state.
                let range = if form == StreamForm::MixedReplace {
                    None
                } else {
                    range
                };
                let spec = SubSpec {
                    path: Arc::from(path),
                    t: wma.unwrap_or(Timestamp::ZERO),
                    range,
                };
                return Step::Group {
                    mode: GroupMode::Stream(form),
                    subs: vec![spec],
                    errors: Vec::new(),
                };
            }
        }
        if let Some(t) = wma {
            return Step::Poll {
                path: Arc::from(path),
                query: WaitQuery { t, range },
            };
        }
        // RFC 9110 §13.1.3: an invalid If-Modified-Since is ignored.
        let ims = head
            .header("if-modified-since")
            .and_then(|v| parse_http_date(v).ok());
        self.read(path, range, ims)
    }

    /// The parts of a `/subscribe` or `/batch` body (a multipart/digest with a boundary),
    /// at most `--max-subrequests` of them; or the reply refusing the body.
    fn sub_requests<'b>(&self, head: &Head, body: &'b Bytes) -> Result<Vec<&'b [u8]>, Box<Reply>> {
        let Some(content_type) = head.header("content-type") else {
            return Err(Box::new(Reply::text(
                415,
                format_args!(
                    "POST {} needs Content-Type: multipart/digest; boundary=...",
                    head.path()
                ),
            )));
        };
        let limits = PartLimits {
            max_parts: self.config().max_subrequests,
        };
        multipart::boundary(content_type)
            .and_then(|b| multipart::split_parts(body, b, limits))
            .map_err(|e| Box::new(Reply::text(e.status(), e)))
    }

    /// `POST /batch`: a multipart/digest body of PUT/POST/DELETE sub-requests, applied
    /// in order per resource (each owner applies its share in one go), answered with one
    /// multipart/digest of their answers (PROTOCOL.md §6).
    fn route_batch(self: &Rc<Self>, head: &Head, body: &Bytes) -> Step {
        let parts = match self.sub_requests(head, body) {
            Ok(parts) => parts,
            Err(reply) => return Step::Reply(*reply),
        };
        let workers = self.shared.mailboxes.len();
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(parts.len());
        let mut per_owner: Vec<OwnerShare> = vec![(Vec::new(), Vec::new()); workers];
        for part in parts {
            let index = replies.len();
            replies.push(None);
            let checked = multipart::parse_subrequest(part)
                .map_err(|e| Box::new(Reply::text(400, format_args!("invalid sub-request: {e}"))))
                .and_then(|sub| {
                    let write = batch_write(&sub, body)?;
                    let authorization = sub
                        .header("authorization")
                        .or_else(|| head.header("authorization"));
                    match self.denied_part(authorization, &write.0, Access::Write, sub.target) {
                        Some(reply) => Err(Box::new(reply)),
                        None => Ok(write),
                    }
                });
            match checked {
                Ok((path, op)) => {
                    let owner = self.owner_of(&path);
                    per_owner[owner].0.push(index);
                    per_owner[owner].1.push((path, op));
                }
                Err(reply) => replies[index] = Some(*reply),
            }
        }
        let mut remote = Vec::new();
        for (owner, (indices, ops)) in per_owner.into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            if owner == self.id {
                for (i, reply) in indices.into_iter().zip(self.apply_batch(ops)) {
                    replies[i] = Some(reply);
                }
            } else {
                let (reply, rx) = oneshot::channel();
                self.send(owner, Msg::Batch { ops, reply });
                remote.push((indices, rx));
            }
        }
        Step::Batch(PendingBatch { replies, remote })
    }

    /// The `403` part of a sub-request its credentials may not make (a part cannot
    /// answer a challenge, so missing credentials are a 403 here too).
    fn denied_part(
        &self,
        authorization: Option<&[u8]>,
        path: &str,
        access: Access,
        target: &str,
    ) -> Option<Reply> {
        let mut reply = match self.authorize(authorization, path, access) {
            Decision::Allow => return None,
            Decision::Unauthorized => {
                Reply::text(403, format_args!("credentials required for {path}"))
            }
            Decision::Forbidden => {
                Reply::text(403, format_args!("these credentials may not access {path}"))
            }
        };
        self.metrics().reject(crate::metrics::Rejection::Forbidden);
        reply.content_location = Some(Bytes::copy_from_slice(target.as_bytes()));
        Some(reply)
    }

    /// `POST /subscribe`: a multipart/digest body of GET sub-requests (PROTOCOL.md §5).
    fn route_subscribe(self: &Rc<Self>, head: &Head, body: &Bytes) -> Step {
        let negotiation = negotiate_all(head.headers_named("accept"));
        let mode = match negotiation.stream {
            Some(StreamForm::Digest) => GroupMode::Stream(StreamForm::Digest),
            _ => GroupMode::Once {
                multipart: negotiation.digest_acceptable,
            },
        };
        let parts = match self.sub_requests(head, body) {
            Ok(parts) => parts,
            Err(reply) => return Step::Reply(*reply),
        };
        let mut subs = Vec::with_capacity(parts.len());
        let mut errors = Vec::new();
        for part in parts {
            match multipart::parse_subrequest(part) {
                Ok(sub) => match subscription(&sub, head) {
                    Ok(spec) => {
                        let authorization = sub
                            .header("authorization")
                            .or_else(|| head.header("authorization"));
                        match self.denied_part(authorization, &spec.path, Access::Read, sub.target)
                        {
                            Some(reply) => errors.push(reply),
                            None => subs.push(spec),
                        }
                    }
                    Err(reply) => errors.push(*reply),
                },
                Err(e) => errors.push(Reply::text(400, format_args!("invalid sub-request: {e}"))),
            }
        }
        Step::Group { mode, subs, errors }
    }

    fn read(self: &Rc<Self>, path: &str, range: Option<RangeSpec>, ims: Option<Timestamp>) -> Step {
        let owner = self.owner_of(path);
        if owner == self.id {
            return Step::Reply(self.get(path, range.as_ref(), ims));
        }
        let (reply, rx) = oneshot::channel();
        self.send(
            owner,
            Msg::Get {
                path: path.into(),
                range,
                if_modified_since: ims,
                reply,
            },
        );
        Step::Remote(rx)
    }

    fn route_write(self: &Rc<Self>, path: &str, op: WriteOp) -> Step {
        let owner = self.owner_of(path);
        if owner == self.id {
            return Step::Reply(self.apply_write(path, op));
        }
        let (reply, rx) = oneshot::channel();
        self.send(
            owner,
            Msg::Write {
                path: path.into(),
                op,
                reply,
            },
        );
        Step::Remote(rx)
    }
}

fn content_type(head: &Head) -> Option<Bytes> {
    head.header("content-type").map(Bytes::copy_from_slice)
}

/// Interprets one `/subscribe` sub-request: its own headers first, then the parent's
/// (`When-Modified-After`, `Range`, … are inherited unless the sub-request sets them).
fn subscription(sub: &SubRequest<'_>, parent: &Head) -> Result<SubSpec, Box<Reply>> {
    let target = sub.target;
    let fail = |status: u16, message: std::fmt::Arguments<'_>| {
        let mut r = Reply::text(status, message);
        r.content_location = Some(Bytes::copy_from_slice(target.as_bytes()));
        Box::new(r)
    };
    let path = match resource_path(target, Method::Get) {
        Ok(Some(p)) => p,
        Ok(None) => "/",
        Err(e) => return Err(fail(400, format_args!("invalid sub-request target: {e}"))),
    };
    if sub.method != "GET" {
        let mut r = fail(405, format_args!("sub-requests of /subscribe must be GET"));
        r.allow = Some("GET");
        return Err(r);
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(fail(400, format_args!("{path} cannot be subscribed to")));
    }
    let inherited = |name: &str| sub.header(name).or_else(|| parent.header(name));
    let t = match inherited("when-modified-after")
        .map(parse_http_date)
        .transpose()
    {
        Ok(t) => t.unwrap_or(Timestamp::ZERO),
        Err(e) => return Err(fail(400, format_args!("invalid When-Modified-After: {e}"))),
    };
    let range = match inherited("range").map(parse_range).transpose() {
        Ok(r) => r.flatten(),
        Err(e) => return Err(fail(400, format_args!("invalid Range: {e}"))),
    };
    Ok(SubSpec {
        path: Arc::from(path),
        t,
        range,
    })
}

/// Interprets one `/batch` sub-request as a write. Its body is shared with the
/// request's (copied when small, so a stored entry does not pin the whole batch).
fn batch_write(sub: &SubRequest<'_>, whole: &Bytes) -> Result<(Box<str>, WriteOp), Box<Reply>> {
    let target = sub.target;
    let fail = |status: u16, message: std::fmt::Arguments<'_>| {
        let mut r = Reply::text(status, message);
        r.content_location = Some(Bytes::copy_from_slice(target.as_bytes()));
        Box::new(r)
    };
    let path = match resource_path(target, Method::Put) {
        Ok(Some(p)) => p,
        Ok(None) => "/",
        Err(e) => return Err(fail(400, format_args!("invalid sub-request target: {e}"))),
    };
    if RESERVED_PATHS.contains(&path) || path == "*" {
        return Err(fail(400, format_args!("{path} is not a resource")));
    }
    let body = if sub.body.len() < 4096 {
        Bytes::copy_from_slice(sub.body)
    } else {
        whole.slice_ref(sub.body)
    };
    let content_type = sub.header("content-type").map(Bytes::copy_from_slice);
    let op = match sub.method {
        "PUT" => WriteOp::Put { content_type, body },
        "POST" => WriteOp::Post { content_type, body },
        "DELETE" => WriteOp::Delete,
        // PROTOCOL.md §6: a GET (or any other method) in a batch is a 400 part.
        _ => {
            return Err(fail(
                400,
                format_args!("sub-requests of /batch must be PUT, POST or DELETE"),
            ))
        }
    };
    Ok((path.into(), op))
}
