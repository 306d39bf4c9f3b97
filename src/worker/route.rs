//! Routing: what a parsed request means and where it runs. Requests for resources of
//! this worker's shard run here, synchronously; the others become messages to the
//! owning worker. Long polls go to the wait machinery in [`super::Worker::start_poll`].

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::mailbox::Msg;
use super::watch::WaitQuery;
use super::Worker;
use crate::http::range::{parse_range, RangeSpec};
use crate::http::request::{Head, Method};
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
    pub fn route(self: &Rc<Self>, head: &Head, body: Bytes) -> Step {
        let path = head.path();
        if path == "*" {
            return Step::Reply(options(RESOURCE_ALLOW));
        }
        if RESERVED_PATHS.contains(&path) {
            return Step::Reply(match head.method {
                Method::Post => Reply::text(501, format_args!("{path} is not implemented yet")),
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
        if let Some(value) = head.header("when-modified-after") {
            return match parse_http_date(value) {
                Ok(t) => Step::Poll {
                    path: Arc::from(path),
                    query: WaitQuery { t, range },
                },
                Err(e) => Step::Reply(Reply::text(
                    400,
                    format_args!("invalid When-Modified-After: {e}"),
                )),
            };
        }
        // RFC 9110 §13.1.3: an invalid If-Modified-Since is ignored.
        let ims = head
            .header("if-modified-since")
            .and_then(|v| parse_http_date(v).ok());
        self.read(path, range, ims)
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
