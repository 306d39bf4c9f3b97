//! Test support: the real `halley` binary in a child process, a raw HTTP/1.1 client
//! over std sockets, and metric observation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single read may block before the test fails (instead of hanging).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

impl Server {
    /// Starts `halley` on an ephemeral port with two workers (so cross-worker paths run)
    /// and metrics enabled, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_limited(None, extra)
    }

    /// Like [`Server::start`], under a hard open-file limit of `nofile` (set by a shell
    /// before it execs the server), for descriptor-exhaustion tests.
    pub fn start_limited(nofile: Option<u32>, extra: &[&str]) -> Server {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ];
        if !extra.contains(&"--threads") {
            args.extend_from_slice(&["--threads", "2"]);
        }
        args.extend_from_slice(extra);
        let mut command = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_halley")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_halley"),
                ]);
                c
            }
        };
        let mut child = command
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn halley");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        // The server prints its addresses once its listeners are bound: that line is
        // the readiness event.
        let addr = loop {
            let line = lines
                .next()
                .expect("halley exited before listening")
                .expect("read stdout");
            if let Some(a) = line.strip_prefix("halley metrics on ") {
                metrics = Some(a.parse().expect("metrics addr"));
            }
            if let Some(a) = line.strip_prefix("halley listening on ") {
                break a.parse().expect("listen addr");
            }
        };
        Server {
            child,
            addr,
            metrics: metrics.expect("metrics line"),
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits for the process to exit (fails the test after `timeout`); returns whether it
    /// exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's resident memory, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The sum of a metric over its labels (workers).
    pub fn metric(&self, name: &str) -> f64 {
        let mut s = TcpStream::connect(self.metrics).expect("connect metrics");
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric` reaches `value` (the server's own count is the event we
    /// wait on); fails the test after a deadline.
    pub fn wait_metric(&self, name: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(name);
            if v == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {v}, expected {value}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first header called `name` (case-insensitive).
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn last_modified(&self) -> String {
        self.header("last-modified")
            .expect("Last-Modified")
            .to_string()
    }
}

/// A raw HTTP/1.1 client. Reads block at most [`READ_TIMEOUT`].
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// Wraps an already connected socket (one with special options).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    /// Sends a request with `Host` and `Content-Length` filled in.
    pub fn send_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "PUT" | "POST") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send(bytes);
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send_request(method, path, headers, body);
        self.read_response_to(method)
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn put(&mut self, path: &str, content_type: &str, body: &[u8]) -> Response {
        self.request("PUT", path, &[("Content-Type", content_type)], body)
    }

    pub fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Response {
        self.request("POST", path, &[("Content-Type", content_type)], body)
    }

    pub fn delete(&mut self, path: &str) -> Response {
        self.request("DELETE", path, &[], b"")
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) => panic!("read failed (timeout means the server never answered): {e}"),
        }
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
    }

    /// Reads one response to a request made with `method` (HEAD responses have no body).
    pub fn read_response_to(&mut self, method: &str) -> Response {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf).expect("valid response head") {
                httparse::Status::Complete(n) => {
                    let headers = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (r.code.unwrap(), headers, n);
                }
                httparse::Status::Partial => {
                    assert!(
                        self.fill() > 0,
                        "connection closed before a complete response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        };
        self.buf.drain(..head_len);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" || matches!(status, 100..=199 | 204 | 304) {
            return resp;
        }
        if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.trim().parse().expect("numeric Content-Length");
            while self.buf.len() < n {
                assert!(self.fill() > 0, "closed inside a body");
            }
            resp.body = self.buf.drain(..n).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            resp.body = self.read_chunked();
        } else {
            while self.fill() > 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Reads a whole chunked body (until the last chunk).
    pub fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(chunk) = self.read_chunk() {
            body.extend_from_slice(&chunk);
        }
        body
    }

    /// The next CRLF-terminated line (without its CRLF); fails with `closed` at EOF.
    fn take_line(&mut self, closed: &str) -> Vec<u8> {
        let end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            assert!(self.fill() > 0, "{closed}");
        };
        let line = self.buf[..end].to_vec();
        self.buf.drain(..end + 2);
        line
    }

    /// Reads one chunk of a chunked body; `None` at the last chunk.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let line = self.take_line("closed inside a chunk header");
        let line = String::from_utf8_lossy(&line).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            // The last chunk: trailer fields, if any, up to an empty line.
            while !self
                .take_line("closed before the end of the chunked body")
                .is_empty()
            {}
            return None;
        }
        while self.buf.len() < size + 2 {
            assert!(self.fill() > 0, "closed inside a chunk");
        }
        let data: Vec<u8> = self.buf.drain(..size).collect();
        assert_eq!(&self.buf[..2], b"\r\n", "chunk data must end with CRLF");
        self.buf.drain(..2);
        Some(data)
    }

    /// Whether the server closes the connection (EOF, or a reset) with no further bytes.
    pub fn expect_closed(&mut self) {
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the connection to close: {e}"),
        }
    }

    /// Whether anything arrives within `d` (used only to assert that a parked request
    /// has *not* been answered; a positive answer is always waited for with a read).
    pub fn nothing_within(&mut self, d: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut chunk = [0u8; 1];
        let quiet = match self.stream.peek(&mut chunk) {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        quiet
    }

    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// `When-Modified-After` for "everything": the epoch.
pub const EPOCH: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

/// Parses an HTTP date with halley's own parser (already unit-tested against vectors).
pub fn stamp(s: &str) -> u64 {
    halley::time::parse_http_date(s.as_bytes())
        .expect("valid date")
        .as_micros()
}

/// One part of a multipart stream, as parsed by `multer` (an independent MIME parser).
#[derive(Debug, Clone)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The embedded HTTP response of a `multipart/digest` part.
    pub fn response(&self) -> Response {
        assert_eq!(
            self.header("content-type"),
            Some("application/http; msgtype=response"),
            "digest part type"
        );
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(&self.body).expect("embedded response head") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!(
                "incomplete embedded response: {:?}",
                String::from_utf8_lossy(&self.body)
            ),
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let resp = Response {
            status: r.code.unwrap(),
            headers,
            body: self.body[n..].to_vec(),
        };
        let cl: usize = resp
            .header("content-length")
            .expect("embedded Content-Length")
            .parse()
            .unwrap();
        assert_eq!(
            resp.body.len(),
            cl,
            "embedded Content-Length matches the part"
        );
        resp
    }
}

/// A multipart response read incrementally: a thread de-chunks the body and feeds
/// `multer`, and every part it completes arrives on a channel.
pub struct PartStream {
    pub head: Response,
    pub boundary: String,
    parts: std::sync::mpsc::Receiver<Result<Part, String>>,
    /// Every body byte received, for other parsers (Python's `email`).
    pub raw: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PartStream {
    /// Reads the response head from `client` (the request already sent) and starts parsing.
    pub fn open(mut client: Client) -> PartStream {
        let head = client.read_stream_head();
        assert_eq!(head.status, 200, "stream status: {}", head.text());
        let ct = head
            .header("content-type")
            .expect("Content-Type")
            .to_string();
        let boundary = ct
            .split("boundary=")
            .nth(1)
            .expect("boundary parameter")
            .trim()
            .to_string();
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let (tx, rx) = std::sync::mpsc::channel();
        let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (raw2, ended2, b2) = (raw.clone(), ended.clone(), boundary.clone());
        client.stream.set_read_timeout(None).unwrap();
        std::thread::spawn(move || {
            let (btx, brx) =
                tokio::sync::mpsc::unbounded_channel::<Result<bytes::Bytes, std::io::Error>>();
            // Reader: network bytes (de-chunked) into multer's input.
            let raw3 = raw2.clone();
            std::thread::spawn(move || loop {
                let data = if chunked {
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        client.read_chunk()
                    })) {
                        Ok(Some(d)) => d,
                        _ => break,
                    }
                } else {
                    let mut buf = vec![0u8; 16 * 1024];
                    match client
                        .take_buffered()
                        .or_else(|| match client.stream.read(&mut buf) {
                            Ok(0) | Err(_) => None,
                            Ok(n) => Some(buf[..n].to_vec()),
                        }) {
                        Some(d) => d,
                        None => break,
                    }
                };
                raw3.lock().unwrap().extend_from_slice(&data);
                if btx.send(Ok(bytes::Bytes::from(data))).is_err() {
                    break;
                }
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move {
                let input = futures_util::stream::unfold(brx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                let mut multipart = multer::Multipart::new(input, b2);
                loop {
                    match multipart.next_field().await {
                        Ok(Some(field)) => {
                            let headers = field
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            match field.bytes().await {
                                Ok(body) => {
                                    if tx
                                        .send(Ok(Part {
                                            headers,
                                            body: body.to_vec(),
                                        }))
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    let _ = tx.send(Err(e.to_string()));
                                    return;
                                }
                            }
                        }
                        Ok(None) => {
                            ended2.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            });
        });
        PartStream {
            head,
            boundary,
            parts: rx,
            raw,
            ended,
        }
    }

    /// The next complete part (fails the test after [`READ_TIMEOUT`]).
    pub fn next(&self) -> Part {
        match self.parts.recv_timeout(READ_TIMEOUT) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => panic!("MIME parser error: {e}"),
            Err(_) => panic!("no part arrived within {READ_TIMEOUT:?}"),
        }
    }

    /// Waits for the multipart body to end (close delimiter seen by the parser).
    pub fn expect_end(&self) {
        match self.parts.recv_timeout(READ_TIMEOUT) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                assert!(
                    self.ended.load(std::sync::atomic::Ordering::SeqCst),
                    "stream ended without a close delimiter"
                );
            }
            Ok(p) => panic!("expected the end of the stream, got a part: {p:?}"),
            Err(e) => panic!("the stream did not end: {e}"),
        }
    }
}

impl Client {
    /// Reads a response head only (the body is a stream).
    pub fn read_stream_head(&mut self) -> Response {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("valid response head")
            {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                let status = r.code.unwrap();
                self.buf.drain(..n);
                return Response {
                    status,
                    headers,
                    body: Vec::new(),
                };
            }
            assert!(self.fill() > 0, "closed before a response head");
        }
    }

    /// Bytes already read past the last parsed element, if any.
    pub fn take_buffered(&mut self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }
}

/// Parses a complete multipart body with Python's standard `email` package (a second,
/// independent MIME parser); returns each part's headers and payload.
pub fn python_parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let script = r#"
import sys, email, email.policy, json, base64
data = sys.stdin.buffer.read()
ct = sys.argv[1]
msg = email.message_from_bytes(b"Content-Type: " + ct.encode() + b"\r\n\r\n" + data, policy=email.policy.HTTP)
out = []
for part in msg.iter_parts():
    payload = part.get_payload(decode=False)
    if isinstance(payload, list):
        payload = b"".join(p.as_bytes() for p in payload)
    elif isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    out.append([str(part.get("Content-Type")), base64.b64encode(payload).decode()])
defects = [str(d) for d in msg.defects] + [str(d) for p in msg.iter_parts() for d in p.defects]
print(json.dumps({"defects": defects, "parts": out}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, content_type])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (the CI script installs it)");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["defects"].as_array().map(Vec::len),
        Some(0),
        "Python's MIME parser found defects: {}",
        v["defects"]
    );
    v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            use base64::Engine;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(p[1].as_str().unwrap())
                .expect("base64 from Python");
            (p[0].as_str().unwrap().to_string(), payload)
        })
        .collect()
}
