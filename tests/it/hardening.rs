//! Production hardening (PROTOCOL.md §9, issue 4): authentication, limits, graceful
//! shutdown, metrics.

use std::io::Write;
use std::time::Duration;

use crate::support::*;

fn auth_file(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A tiny self-cleaning temporary file (no extra crate needed).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p =
                std::env::temp_dir().join(format!("halley-test-{}-{n}.toml", std::process::id()));
            std::fs::write(&p, text).unwrap();
            TempPath(p)
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const AUTH: &str = r#"
realm = "test"
[anonymous]
read = ["/public/"]

[[user]]
name = "feed"
password = "s3cret"
read = ["/"]
write = ["/quotes/"]

[[token]]
token = "reader-token"
read = ["/quotes/"]
"#;

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[test]
fn authentication_outcomes() {
    let file = auth_file(AUTH);
    let server = Server::start(&["--auth", file.as_str()]);
    let mut c = server.client();
    let feed = basic("feed", "s3cret");

    // Missing credentials: 401 with a challenge for each scheme.
    let r = c.request(
        "PUT",
        "/quotes/ACME",
        &[("Content-Type", "text/plain")],
        b"1",
    );
    assert_eq!(r.status, 401);
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|v| v.starts_with("Basic realm=\"test\"")),
        "{challenges:?}"
    );
    assert!(
        challenges
            .iter()
            .any(|v| v.starts_with("Bearer realm=\"test\"")),
        "{challenges:?}"
    );
    // Wrong password: 401; right one: allowed.
    let r = c.request(
        "PUT",
        "/quotes/ACME",
        &[("Authorization", &basic("feed", "nope"))],
        b"1",
    );
    assert_eq!(r.status, 401);
    let r = c.request(
        "PUT",
        "/quotes/ACME",
        &[("Authorization", &feed), ("Content-Type", "text/plain")],
        b"1",
    );
    assert_eq!(r.status, 201);
    // Valid credentials without the grant: 403.
    let r = c.request("PUT", "/other", &[("Authorization", &feed)], b"1");
    assert_eq!(r.status, 403);
    let r = c.request(
        "PUT",
        "/quotes/ACME",
        &[("Authorization", "Bearer reader-token")],
        b"2",
    );
    assert_eq!(r.status, 403, "the token may only read");
    // Bearer read, anonymous read of a public prefix, anonymous refusal elsewhere.
    let r = c.request(
        "GET",
        "/quotes/ACME",
        &[("Authorization", "Bearer reader-token")],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "1"));
    assert_eq!(
        c.get("/public/nothing").status,
        404,
        "anonymous may read /public/"
    );
    assert_eq!(c.get("/quotes/ACME").status, 401);
    // Long polls and streams are reads too.
    let r = c.request(
        "GET",
        "/quotes/ACME",
        &[("When-Modified-After", EPOCH)],
        b"",
    );
    assert_eq!(r.status, 401);
    assert!(server.metric("halley_rejections_total") >= 6.0);

    // Refused on the head: a client waiting for `100 Continue` gets the refusal
    // instead, and the connection closes (its megabyte is never asked for).
    let mut waiting = server.client();
    waiting.send(
        "PUT /quotes/ACME HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\
         Expect: 100-continue\r\n\r\n",
    );
    let r = waiting.read_response();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("close"));
    waiting.expect_closed();
    // A refused body that is sent is read and dropped: the connection carries on.
    let mut sender = server.client();
    let r = sender.request("POST", "/quotes/ACME", &[], &vec![b'x'; 300_000]);
    assert_eq!(r.status, 401);
    let r = sender.request("GET", "/quotes/ACME", &[("Authorization", &feed)], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "1"));
    assert_eq!(server.metric("halley_requests_total{code=\"401\"}"), 6.0);
    assert_eq!(server.metric("halley_requests_total{code=\"403\"}"), 2.0);
}

#[test]
fn subscribe_and_batch_check_each_sub_request() {
    let file = auth_file(AUTH);
    let server = Server::start(&["--auth", file.as_str()]);
    let mut c = server.client();
    let feed = basic("feed", "s3cret");
    c.request(
        "PUT",
        "/quotes/A",
        &[("Authorization", &feed), ("Content-Type", "text/plain")],
        b"a",
    );
    assert_eq!(
        c.request("PUT", "/secret/x", &[("Authorization", &feed)], b"nope")
            .status,
        403
    );

    // The token may read /quotes/ but not /private/: that part is 403, the other proceeds.
    let body = "--S\r\nGET /quotes/A\r\n--S\r\nGET /private/x\r\n--S--\r\n";
    let r = c.request(
        "POST",
        "/subscribe",
        &[
            ("Authorization", "Bearer reader-token"),
            ("Content-Type", "multipart/digest; boundary=S"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    let parts: Vec<String> = python_parts(r.header("content-type").unwrap(), &r.body)
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(parts
        .iter()
        .any(|p| p.starts_with("HTTP/1.1 200") && p.ends_with('a')));
    assert!(parts
        .iter()
        .any(|p| p.starts_with("HTTP/1.1 403") && p.contains("Content-Location: /private/x")));

    // /batch: each write is checked on its own; the allowed one applies.
    let batch = "--B\r\nPUT /quotes/B\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nb\r\n--B\r\nPUT /other\r\nContent-Length: 1\r\n\r\nx\r\n--B--\r\n";
    let r = c.request(
        "POST",
        "/batch",
        &[
            ("Authorization", &feed),
            ("Content-Type", "multipart/digest; boundary=B"),
        ],
        batch.as_bytes(),
    );
    let parts: Vec<String> = python_parts(r.header("content-type").unwrap(), &r.body)
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect();
    assert!(parts[0].starts_with("HTTP/1.1 201"), "{parts:?}");
    assert!(
        parts[1].starts_with("HTTP/1.1 403") && parts[1].contains("Content-Location: /other"),
        "{parts:?}"
    );
    let r = c.request("GET", "/other", &[("Authorization", &feed)], b"");
    assert_eq!(r.status, 404, "the forbidden write did not apply");
}

#[test]
fn per_ip_connection_cap() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let held: Vec<Client> = (0..2).map(|_| server.client()).collect();
    server.wait_metric("halley_open_connections", 2.0);
    let mut third = server.client();
    let r = third.read_response();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    third.expect_closed();
    // Another source address is not affected.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let mut other = Client::from_stream(sock.into());
    assert_eq!(other.get("/x").status, 404);
    // Closing one frees a slot.
    drop(held);
    server.wait_metric("halley_open_connections", 1.0);
    assert_eq!(server.client().get("/x").status, 404);
    assert_eq!(
        server.metric("halley_rejections_total{reason=\"per_ip_limit\"}"),
        1.0
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = Server::start(&["--idle-timeout", "200ms"]);
    let mut c = server.client();
    assert_eq!(c.get("/x").status, 404);
    let start = std::time::Instant::now();
    c.expect_closed();
    let idle = start.elapsed();
    assert!(
        idle >= Duration::from_millis(180) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle, not after the 200 ms timeout"
    );
}

#[test]
fn storage_limits_refuse_with_507_and_keep_existing_data() {
    let server = Server::start(&["--max-resources", "2", "--max-stored-bytes", "1KiB"]);
    let mut c = server.client();
    assert_eq!(c.put("/a", "text/plain", &[b'a'; 400]).status, 201);
    assert_eq!(c.put("/b", "text/plain", &[b'b'; 400]).status, 201);
    let r = c.put("/c", "text/plain", b"c");
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("resources"));
    let r = c.post("/a", "text/plain", &[b'x'; 400]);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("bytes"));
    assert_eq!(c.get("/a").body, vec![b'a'; 400], "existing data untouched");
    assert_eq!(c.get("/c").status, 404);
    // Deleting frees room.
    assert_eq!(c.delete("/b").status, 204);
    assert_eq!(c.put("/c", "text/plain", b"c").status, 201);
    assert_eq!(server.metric("halley_resources"), 2.0);
    assert!(server.metric("halley_rejections_total{reason=\"storage_full\"}") >= 2.0);
}

#[test]
fn a_deep_pipeline_is_answered_in_order_without_unbounded_buffering() {
    let server = Server::start(&["--max-pipeline", "16"]);
    let mut c = server.client();
    // Ten resources spread over the workers, so answers come from local and remote
    // owners alike; each answer names the request it belongs to.
    for k in 0..10 {
        c.put(&format!("/p{k}"), "text/plain", format!("v{k}").as_bytes());
    }
    let reader_stream = c.stream.try_clone().unwrap();
    // 5,000 requests written as fast as possible while this thread reads.
    let writer = std::thread::spawn(move || {
        let mut s = reader_stream;
        let hundred: String = (0..100)
            .map(|i| format!("GET /p{} HTTP/1.1\r\nHost: t\r\n\r\n", i % 10))
            .collect();
        for _ in 0..50 {
            s.write_all(hundred.as_bytes()).unwrap();
        }
    });
    for i in 0..5000 {
        let r = c.read_response();
        assert_eq!(
            (r.status, r.text()),
            (200, format!("v{}", i % 10)),
            "answer {i} out of order"
        );
    }
    writer.join().unwrap();
}

#[test]
fn graceful_shutdown_answers_parked_polls_and_ends_streams() {
    let mut server = Server::start(&["--shutdown-timeout", "5s"]);
    let mut w = server.client();
    let t = w.put("/s", "text/plain", b"x").last_modified();
    let mut parked = server.client();
    parked.send_request("GET", "/s", &[("When-Modified-After", &t)], b"");
    server.wait_metric("halley_parked", 1.0);
    let mut s = server.client();
    s.send_request("GET", "/s", &[("Accept", "multipart/digest")], b"");
    let stream = PartStream::open(s);
    stream.next();
    let mut idle = server.client();
    assert_eq!(idle.get("/s").status, 200);

    server.terminate();
    let r = parked.read_response();
    assert_eq!(
        r.status, 304,
        "a parked poll is answered so it can re-poll elsewhere"
    );
    assert_eq!(r.last_modified(), t);
    assert_eq!(r.header("connection"), Some("close"));
    stream.expect_end();
    idle.expect_closed();
    assert!(
        server.wait_exit(Duration::from_secs(10)),
        "exits cleanly within the shutdown timeout"
    );
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn metrics_move_with_traffic() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t = w.put("/m", "text/plain", b"0").last_modified();
    let mut poll = server.client();
    poll.send_request("GET", "/m", &[("When-Modified-After", &t)], b"");
    server.wait_metric("halley_parked", 1.0);
    let s = {
        let mut c = server.client();
        c.send_request("GET", "/m", &[("Accept", "multipart/digest")], b"");
        PartStream::open(c)
    };
    s.next();
    let before = |n: &str| server.metric(n);
    let (changes, deliveries, parts, bytes, hist) = (
        before("halley_changes_published_total"),
        before("halley_deliveries_total"),
        before("halley_stream_parts_total"),
        before("halley_bytes_written_total"),
        before("halley_publish_to_write_seconds_count"),
    );
    w.post("/m", "text/plain", b"1");
    assert_eq!(poll.read_response().status, 200);
    s.next();
    server.wait_metric("halley_publish_to_write_seconds_count", hist + 2.0);
    assert_eq!(
        server.metric("halley_changes_published_total"),
        changes + 1.0
    );
    assert_eq!(server.metric("halley_deliveries_total"), deliveries + 1.0);
    assert_eq!(server.metric("halley_stream_parts_total"), parts + 1.0);
    assert!(server.metric("halley_bytes_written_total") > bytes);
    assert!(server.metric("halley_requests_total{code=\"200\"}") >= 2.0);
    assert_eq!(server.metric("halley_streams"), 1.0);
    assert_eq!(server.metric("halley_parked"), 0.0);
    let _ = w.request("BREW", "/m", &[], b"");
    assert!(server.metric("halley_requests_total{code=\"501\"}") >= 1.0);
}
