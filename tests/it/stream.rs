//! Streams (PROTOCOL.md §4) and `POST /subscribe` (§5), parsed with real MIME parsers
//! (`multer`, and Python's `email` package where noted).

use std::time::Duration;

use crate::support::*;

/// Opens a stream: `GET path` with `accept` and extra headers.
fn open(server: &Server, path: &str, accept: &str, headers: &[(&str, &str)]) -> PartStream {
    let mut c = server.client();
    let mut all = vec![("Accept", accept)];
    all.extend_from_slice(headers);
    c.send_request("GET", path, &all, b"");
    PartStream::open(c)
}

/// One worker with 16 KiB stream budgets and socket send buffers: a reader that does
/// not read stalls its stream quickly.
const SMALL_BUFFERS: [&str; 6] = [
    "--stream-buffer",
    "16KiB",
    "--stream-sndbuf",
    "16KiB",
    "--threads",
    "1",
];

/// A client with a 4 KiB receive buffer (a tiny window when it does not read).
fn small_window_client(server: &Server) -> Client {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    Client::from_stream(sock.into())
}

/// Rebuilds a representation from the digest parts of a `bytes`-range stream,
/// checking each part continues exactly where the previous one ended.
struct Rebuilt {
    body: Vec<u8>,
    last_modified: Option<String>,
}

impl Rebuilt {
    fn new() -> Rebuilt {
        Rebuilt {
            body: Vec::new(),
            last_modified: None,
        }
    }

    fn apply(&mut self, resp: &Response) {
        if let (Some(prev), Some(lm)) = (&self.last_modified, resp.header("last-modified")) {
            assert!(
                stamp(lm) > stamp(prev),
                "parts of one resource arrive in stamp order"
            );
        }
        self.last_modified = resp.header("last-modified").map(str::to_string);
        match resp.status {
            200 => self.body = resp.body.clone(),
            206 => {
                let cr = resp
                    .header("content-range")
                    .expect("206 carries Content-Range");
                let range = cr.strip_prefix("bytes ").expect("bytes range");
                let (span, total) = range.split_once('/').unwrap();
                let (first, last) = span.split_once('-').unwrap();
                let (first, last, total): (usize, usize, usize) = (
                    first.parse().unwrap(),
                    last.parse().unwrap(),
                    total.parse().unwrap(),
                );
                assert_eq!(
                    first,
                    self.body.len(),
                    "a 206 continues exactly where the client is"
                );
                assert_eq!(last + 1, total);
                self.body.extend_from_slice(&resp.body);
                assert_eq!(self.body.len(), total);
            }
            410 => self.body.clear(),
            other => panic!("unexpected status {other} in a stream"),
        }
    }
}

#[test]
fn digest_stream_carries_put_post_delete_in_order() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/news", "text/plain", b"Hello");
    let s = open(
        &server,
        "/news",
        "multipart/digest",
        &[("Range", "bytes=5-")],
    );
    assert!(s
        .head
        .header("content-type")
        .unwrap()
        .starts_with("multipart/digest; boundary="));
    assert_eq!(s.head.header("transfer-encoding"), Some("chunked"));

    let first = s.next().response();
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "Hello"),
        "the current state comes first"
    );
    assert_eq!(first.header("content-location"), Some("/news"));

    let t_post = w.post("/news", "text/plain", b" world").last_modified();
    let p = s.next().response();
    assert_eq!((p.status, p.text().as_str()), (206, " world"));
    assert_eq!(p.header("content-range"), Some("bytes 5-10/11"));
    assert_eq!(p.last_modified(), t_post);
    assert_eq!(p.header("content-type"), Some("text/plain"));

    w.put("/news", "text/plain", b"replaced");
    let p = s.next().response();
    assert_eq!((p.status, p.text().as_str()), (200, "replaced"));

    let t_del = w.delete("/news").last_modified();
    let p = s.next().response();
    assert_eq!(p.status, 410);
    assert_eq!(p.last_modified(), t_del);
    assert_eq!(p.header("content-location"), Some("/news"));

    // The stream stays open across the delete and sees the re-creation.
    w.post("/news", "text/plain", b"back");
    let p = s.next().response();
    assert_eq!((p.status, p.text().as_str()), (200, "back"));
}

#[test]
fn hundreds_of_rapid_changes_arrive_in_order_with_the_final_state_last() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t0 = w.put("/tape", "text/plain", b"").last_modified();
    let s = open(
        &server,
        "/tape",
        "multipart/digest",
        &[("When-Modified-After", &t0), ("Range", "bytes=0-")],
    );
    server.wait_metric("halley_streams", 1.0);
    // 500 appends pipelined in one burst.
    let mut burst = Vec::new();
    for i in 0..500 {
        let body = format!("{i};");
        burst.extend_from_slice(
            format!("POST /tape HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
    }
    w.send(burst);
    let mut last_write = String::new();
    for _ in 0..500 {
        last_write = w.read_response().last_modified();
    }
    let want: String = (0..500).map(|i| format!("{i};")).collect();
    let mut rebuilt = Rebuilt::new();
    while rebuilt.body.len() < want.len() {
        rebuilt.apply(&s.next().response());
    }
    assert_eq!(String::from_utf8(rebuilt.body).unwrap(), want);
    assert_eq!(
        rebuilt.last_modified.as_deref(),
        Some(last_write.as_str()),
        "the final state is the last part"
    );
}

#[test]
fn negotiation_picks_stream_long_poll_or_plain() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t = w.put("/n", "text/plain", b"x").last_modified();

    // Preferred explicitly: a stream.
    let s = open(
        &server,
        "/n",
        "multipart/digest, multipart/mixed-replace;q=0.7, */*;q=0.5",
        &[],
    );
    assert_eq!(s.next().response().text(), "x");

    // Acceptable but less preferred: an ordinary long poll.
    let mut c = server.client();
    c.send_request(
        "GET",
        "/n",
        &[
            ("Accept", "*/*, multipart/digest;q=0.5"),
            ("When-Modified-After", &t),
        ],
        b"",
    );
    server.wait_metric("halley_parked", 1.0);
    w.put("/n", "text/plain", b"y");
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "y"));
    assert_eq!(r.header("content-type"), Some("text/plain"));

    // Through a wildcard only: not a stream.
    let r = server
        .client()
        .request("GET", "/n", &[("Accept", "multipart/*")], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "y"));

    // x-mixed-replace, in both spellings.
    for accept in ["multipart/x-mixed-replace", "multipart/mixed-replace"] {
        let s = open(&server, "/n", accept, &[]);
        assert!(s
            .head
            .header("content-type")
            .unwrap()
            .starts_with("multipart/x-mixed-replace; boundary="));
        assert_eq!(s.next().body, b"y");
    }
}

#[test]
fn x_mixed_replace_sends_full_states_and_ends_on_delete() {
    let server = Server::start(&[]);
    let mut w = server.client();
    // An absent resource: the stream waits for its creation.
    let s = open(&server, "/frame", "multipart/x-mixed-replace", &[]);
    server.wait_metric("halley_streams", 1.0);
    w.put("/frame", "image/png", b"png-1");
    let p = s.next();
    assert_eq!(
        (p.header("content-type"), p.body.as_slice()),
        (Some("image/png"), &b"png-1"[..])
    );
    w.post("/frame", "image/png", b"+2");
    let p = s.next();
    assert_eq!(p.body, b"png-1+2", "each part is the full new state");
    assert!(p.header("last-modified").is_some());
    w.delete("/frame");
    s.expect_end();
    server.wait_metric("halley_streams", 0.0);
}

#[test]
fn subscribe_streams_several_resources_in_both_part_forms() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t0 = w.put("/weather", "text/plain", b"rain").last_modified();
    w.put("/news", "application/json", b"[]");
    w.put("/other", "text/plain", b"o");
    // The parent's When-Modified-After is inherited by /weather (which therefore
    // waits) and overridden by /news (which asks from the epoch: answered at once).
    // /news's Range is its own; the bare form and the explicit form are mixed.
    let body = format!(
        "--sep\r\nGET /weather\r\n\r\n--sep\r\nContent-Type: application/http; msgtype=request\r\n\r\nGET /news HTTP/1.1\r\nWhen-Modified-After: {EPOCH}\r\nRange: updated {EPOCH}-\r\n\r\n--sep--\r\n"
    );
    let mut c = server.client();
    c.send_request(
        "POST",
        "/subscribe",
        &[
            (
                "Accept",
                "multipart/digest, multipart/mixed-replace;q=0.7, */*;q=0.5",
            ),
            ("When-Modified-After", &t0),
            ("Content-Type", "multipart/digest; boundary=sep"),
        ],
        body.as_bytes(),
    );
    let s = PartStream::open(c);
    let first = s.next().response();
    assert_eq!(first.header("content-location"), Some("/news"));
    assert_eq!((first.status, first.text().as_str()), (200, "[]"));

    let t_news = w
        .post("/news", "application/json", b"{\"h\":1}")
        .last_modified();
    w.put("/other", "text/plain", b"ignored: not subscribed");
    w.put("/weather", "text/plain", b"sun");
    let a = s.next().response();
    assert_eq!(a.header("content-location"), Some("/news"));
    assert_eq!(
        a.status, 206,
        "the updated range moves forward with the stream"
    );
    assert_eq!(a.text(), "[{\"h\":1}]");
    assert_eq!(a.last_modified(), t_news);
    let b = s.next().response();
    assert_eq!(b.header("content-location"), Some("/weather"));
    assert_eq!((b.status, b.text().as_str()), (200, "sun"));
}

#[test]
fn subscribe_long_poll_and_plain_answers() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let ta = w.put("/a", "text/plain", b"a0").last_modified();
    let tb = w.put("/b", "text/plain", b"b0").last_modified();
    let body = format!("--S\r\nGET /a\r\nWhen-Modified-After: {ta}\r\n\r\n--S\r\nGET /b\r\nWhen-Modified-After: {tb}\r\n--S--\r\n");
    let subscribe = |accept: &str| {
        let mut c = server.client();
        c.send_request(
            "POST",
            "/subscribe",
            &[
                ("Accept", accept),
                ("Content-Type", "multipart/digest; boundary=S"),
            ],
            body.as_bytes(),
        );
        c
    };

    // Nothing ready: the complete multipart answer waits for the first change.
    let mut multi = subscribe("*/*");
    assert!(multi.nothing_within(Duration::from_millis(100)));
    w.put("/b", "text/plain", b"b1");
    let r = multi.read_response();
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap().to_string();
    assert!(ct.starts_with("multipart/digest; boundary="));
    let parts = python_parts(&ct, &r.body);
    assert_eq!(parts.len(), 1, "only the ready resource");
    let embedded = String::from_utf8(parts[0].1.clone()).unwrap();
    assert!(
        embedded.contains("Content-Location: /b") && embedded.ends_with("b1"),
        "{embedded}"
    );

    // Both ready now (from the stamps we sent): one answer with both; the connection carries on.
    w.put("/a", "text/plain", b"a1");
    let mut both = subscribe("multipart/digest;q=0.5, text/html");
    let r = both.read_response();
    let parts = python_parts(r.header("content-type").unwrap(), &r.body);
    let mut embedded: Vec<String> = parts
        .iter()
        .map(|(_, body)| String::from_utf8(body.clone()).unwrap())
        .collect();
    embedded.sort();
    assert_eq!(embedded.len(), 2);
    assert!(
        embedded[0].contains("Content-Location: /a") && embedded[0].ends_with("a1"),
        "{embedded:?}"
    );
    assert!(
        embedded[1].contains("Content-Location: /b") && embedded[1].ends_with("b1"),
        "{embedded:?}"
    );
    assert_eq!(both.get("/a").text(), "a1");

    // A client that does not take multipart gets the earliest ready resource, plainly.
    let mut plain = subscribe("text/plain");
    let r = plain.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "b1"),
        "/b changed before /a"
    );
    assert_eq!(r.header("content-location"), Some("/b"));
}

#[test]
fn subscribe_refusals_and_error_parts() {
    let server = Server::start(&["--max-subrequests", "3"]);
    let mut c = server.client();
    let r = c.request(
        "POST",
        "/subscribe",
        &[("Content-Type", "text/plain")],
        b"x",
    );
    assert_eq!(r.status, 415);
    let many = "--S\r\nGET /1\r\n--S\r\nGET /2\r\n--S\r\nGET /3\r\n--S\r\nGET /4\r\n--S--\r\n";
    let r = c.request(
        "POST",
        "/subscribe",
        &[("Content-Type", "multipart/digest; boundary=S")],
        many.as_bytes(),
    );
    assert_eq!(r.status, 413);
    assert!(r.text().contains('3'), "says the limit: {}", r.text());
    let r = c.request(
        "POST",
        "/subscribe",
        &[("Content-Type", "multipart/digest; boundary=S")],
        b"no delimiter here",
    );
    assert_eq!(r.status, 400);

    // Bad sub-requests get their own parts; a good one proceeds.
    c.put("/ok", "text/plain", b"fine");
    let body = "--S\r\nDELETE /ok\r\n--S\r\nGET /x\r\nWhen-Modified-After: nonsense\r\n--S\r\nGET /ok\r\n--S--\r\n";
    let r = c.request(
        "POST",
        "/subscribe",
        &[("Content-Type", "multipart/digest; boundary=S")],
        body.as_bytes(),
    );
    let parts = python_parts(r.header("content-type").unwrap(), &r.body);
    let texts: Vec<String> = parts
        .iter()
        .map(|p| String::from_utf8_lossy(&p.1).into_owned())
        .collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts
        .iter()
        .any(|t| t.starts_with("HTTP/1.1 405") && t.contains("Content-Location: /ok")));
    assert!(texts
        .iter()
        .any(|t| t.starts_with("HTTP/1.1 400") && t.contains("When-Modified-After")));
    assert!(texts
        .iter()
        .any(|t| t.starts_with("HTTP/1.1 200") && t.ends_with("fine")));
}

#[test]
fn a_payload_cannot_forge_a_part() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/a", "text/plain", b"a");
    w.put("/b", "text/plain", b"b");
    let body = "--S\r\nGET /a\r\nRange: bytes=1-\r\n--S\r\nGET /b\r\n--S--\r\n";
    let mut c = server.client();
    c.send_request(
        "POST",
        "/subscribe",
        &[
            ("Accept", "multipart/digest"),
            ("Content-Type", "multipart/digest; boundary=S"),
        ],
        body.as_bytes(),
    );
    let s = PartStream::open(c);
    let boundary = s.boundary.clone();
    s.next();
    s.next();

    // The attacker has read the boundary from its own stream and tries to inject a
    // fake "/b" update into the /a payload, whole or split across two appends.
    let forged = format!(
        "x\r\n--{boundary}\r\nContent-Type: application/http; msgtype=response\r\n\r\nHTTP/1.1 200 OK\r\nContent-Location: /b\r\nContent-Length: 6\r\n\r\nforged"
    );
    let r = w.post("/a", "text/plain", forged.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    let (left, right) = forged.split_at(forged.find(&boundary).unwrap() + 5);
    assert_eq!(w.post("/a", "text/plain", left.as_bytes()).status, 204);
    assert_eq!(
        w.post("/a", "text/plain", right.as_bytes()).status,
        400,
        "the seam is checked"
    );
    // A harmless change marks the end of what we look at.
    w.post("/a", "text/plain", b"END");

    let p = s.next().response();
    assert_eq!((p.status, p.text()), (206, left.to_string()));
    let p = s.next().response();
    assert_eq!((p.status, p.text().as_str()), (206, "END"));
    let raw = s.raw.lock().unwrap().clone();
    // A second, independent MIME parser over everything received: exactly four parts,
    // none of them the forged /b update.
    let content_type = s.head.header("content-type").unwrap().to_string();
    let mut closed = raw.clone();
    closed.extend_from_slice(b"--\r\n");
    let parts = python_parts(&content_type, &closed);
    assert_eq!(parts.len(), 4);
    assert!(parts
        .iter()
        .all(|p| !String::from_utf8_lossy(&p.1).contains("forged")));
}

#[test]
fn a_stalled_reader_is_summarised_and_does_not_hold_back_a_fast_one() {
    const BUDGET: usize = 16 * 1024;
    const PARTS: usize = 300;
    const SIZE: usize = 8 * 1024;
    let server = Server::start(&SMALL_BUFFERS);
    let mut w = server.client();
    w.put("/big", "text/plain", b"");

    // The stalled reader: a tiny receive window, and it does not read.
    let mut stalled = small_window_client(&server);
    stalled.send_request(
        "GET",
        "/big",
        &[("Accept", "multipart/digest"), ("Range", "bytes=0-")],
        b"",
    );
    let fast = open(
        &server,
        "/big",
        "multipart/digest",
        &[("Range", "bytes=0-")],
    );
    server.wait_metric("halley_streams", 2.0);
    assert_eq!(fast.next().response().status, 200);

    // The fast reader reads as the changes come.
    let reader = std::thread::spawn(move || {
        let mut rebuilt = Rebuilt::new();
        while rebuilt.body.len() < PARTS * SIZE {
            rebuilt.apply(&fast.next().response());
        }
        rebuilt
    });
    let mut want = Vec::new();
    for i in 0..PARTS {
        let chunk = vec![b'a' + (i % 26) as u8; SIZE];
        want.extend_from_slice(&chunk);
        assert_eq!(w.post("/big", "text/plain", &chunk).status, 204);
    }
    let fast_result = reader.join().unwrap();
    assert_eq!(
        fast_result.body, want,
        "the fast reader got everything while the other one stalled"
    );

    // The stalled reader costs at most its budget (plus one part) on the server.
    let buffered = server.metric("halley_stream_buffered_bytes");
    assert!(
        buffered <= (BUDGET + SIZE + 4096) as f64,
        "{buffered} bytes buffered for the stalled reader"
    );
    assert!(
        server.metric("halley_summarised_total") > 0.0,
        "its changes were summarised"
    );

    // Now it reads: what was queued, then one catch-up that completes the state.
    let stalled = PartStream::open(stalled);
    let mut rebuilt = Rebuilt::new();
    let mut largest = 0;
    while rebuilt.body.len() < want.len() {
        let resp = stalled.next().response();
        largest = largest.max(resp.body.len());
        rebuilt.apply(&resp);
    }
    assert_eq!(rebuilt.body, want);
    assert!(
        largest > SIZE,
        "a catch-up merged several appends into one part ({largest} bytes)"
    );
}

#[test]
fn each_part_is_encoded_once_for_all_subscribers() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/shared", "text/plain", b"");
    let streams: Vec<PartStream> = (0..100)
        .map(|_| {
            open(
                &server,
                "/shared",
                "multipart/digest",
                &[("Range", "bytes=0-")],
            )
        })
        .collect();
    server.wait_metric("halley_streams", 100.0);
    for s in &streams {
        s.next();
    }
    let encoded_before = server.metric("halley_shared_encodings");
    let parts_before = server.metric("halley_stream_parts_total");
    for i in 0..20 {
        w.post("/shared", "text/plain", format!("<{i}>").as_bytes());
    }
    for s in &streams {
        let mut rebuilt = Rebuilt {
            body: Vec::new(),
            last_modified: None,
        };
        while rebuilt.body.len() < (0..20).map(|i: i32| format!("<{i}>").len()).sum() {
            rebuilt.apply(&s.next().response());
        }
    }
    assert_eq!(
        server.metric("halley_stream_parts_total") - parts_before,
        2000.0
    );
    assert_eq!(
        server.metric("halley_shared_encodings") - encoded_before,
        20.0,
        "one encoding per change, shared"
    );
}

#[test]
fn heartbeats_keep_idle_streams_alive() {
    let server = Server::start(&["--heartbeat", "100ms"]);
    let mut w = server.client();
    w.put("/quiet", "text/plain", b"q");
    let s = open(&server, "/quiet", "multipart/digest", &[]);
    s.next();
    let beat = s.next();
    assert_eq!(beat.header("content-type"), Some("text/plain"));
    assert!(beat.body.is_empty(), "an empty text/plain part");
    let x = open(&server, "/quiet", "multipart/x-mixed-replace", &[]);
    let first = x.next();
    let again = x.next();
    assert_eq!(
        (first.body.clone(), again.body),
        (b"q".to_vec(), b"q".to_vec()),
        "the last part again"
    );
}

#[test]
fn http10_streams_are_close_delimited() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/old", "text/plain", b"1");
    let mut c = server.client();
    c.send("GET /old HTTP/1.0\r\nAccept: multipart/digest\r\n\r\n");
    let s = PartStream::open(c);
    assert!(s.head.header("transfer-encoding").is_none());
    assert_eq!(s.next().response().text(), "1");
    w.put("/old", "text/plain", b"2");
    assert_eq!(s.next().response().text(), "2");

    // A replacement stream that ends (its resource deleted) ends with the closing
    // delimiter and then the connection's close, which delimits the body.
    let mut x = server.client();
    x.send("GET /old HTTP/1.0\r\nAccept: multipart/x-mixed-replace\r\n\r\n");
    let xs = PartStream::open(x);
    assert!(xs.head.header("transfer-encoding").is_none());
    assert!(xs.head.header("content-length").is_none());
    assert_eq!(xs.next().body, b"2");
    server.wait_metric("halley_open_connections", 3.0);
    w.delete("/old");
    xs.expect_end();
    assert_eq!(
        s.next().response().status,
        410,
        "the digest stream carries on"
    );
    server.wait_metric("halley_open_connections", 2.0);
}

#[test]
fn atom_feeds() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let feed = "<?xml version=\"1.0\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\"><title>News</title>\n<entry><title>one</title></entry>\n</feed>\n";
    let t0 = w
        .put("/feed", "application/atom+xml", feed.as_bytes())
        .last_modified();
    assert_eq!(
        w.post(
            "/feed",
            "application/atom+xml",
            b"<entry><title>broken</entry>"
        )
        .status,
        400
    );
    assert_eq!(
        w.post(
            "/feed",
            "application/atom+xml",
            b"<entry><title>two</title></entry>"
        )
        .status,
        204
    );
    let r = w.request(
        "GET",
        "/feed",
        &[
            ("Range", &format!("updated {t0}-")),
            ("When-Modified-After", &t0),
        ],
        b"",
    );
    assert_eq!(r.status, 206);
    let text = r.text();
    assert!(
        text.contains("<title>News</title>") && text.contains("<title>two</title>"),
        "{text}"
    );
    assert!(
        !text.contains("<title>one</title>"),
        "only the entries after D"
    );
    let whole = w.get("/feed").text();
    assert!(whole.contains("<title>one</title>") && whole.contains("<title>two</title>"));
    for doc in [text, whole] {
        let check = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, xml.dom.minidom; xml.dom.minidom.parseString(sys.stdin.buffer.read())",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(doc.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(check.success(), "well-formed XML: {doc}");
    }
}

#[test]
fn memory_stays_bounded_with_a_thousand_stalled_readers() {
    const READERS: usize = 1000;
    const RESOURCES: usize = 10;
    const SIZE: usize = 4096;
    let server = Server::start(&["--stream-buffer", "8KiB", "--stream-sndbuf", "8KiB"]);
    let mut w = server.client();
    for r in 0..RESOURCES {
        w.put(&format!("/s/{r}"), "text/plain", b"");
    }
    let readers: Vec<Client> = (0..READERS)
        .map(|i| {
            let mut c = small_window_client(&server);
            let path = format!("/s/{}", i % RESOURCES);
            c.send_request(
                "GET",
                &path,
                &[("Accept", "multipart/digest"), ("Range", "bytes=0-")],
                b"",
            );
            c
        })
        .collect();
    server.wait_metric("halley_streams", READERS as f64);
    let rss_before = server.rss_kib();
    // 200 KiB per resource to readers that never read: 200 MB if it were buffered.
    let mut want = vec![Vec::new(); RESOURCES];
    for i in 0..50 {
        for (r, content) in want.iter_mut().enumerate() {
            let chunk = vec![b'a' + ((i + r) % 26) as u8; SIZE];
            content.extend_from_slice(&chunk);
            assert_eq!(w.post(&format!("/s/{r}"), "text/plain", &chunk).status, 204);
        }
    }
    let buffered = server.metric("halley_stream_buffered_bytes");
    let bound = (READERS * (8 * 1024 + SIZE + 1024)) as f64;
    assert!(
        buffered <= bound,
        "{buffered} bytes held for stalled readers (bound {bound})"
    );
    let grown_mib = server.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 48,
        "server memory grew {grown_mib} MiB with {READERS} stalled readers"
    );
    assert!(server.metric("halley_summarised_total") > 0.0);

    // A sample of them wakes up and gets exactly the final state.
    for (i, c) in readers.into_iter().enumerate().take(20) {
        let s = PartStream::open(c);
        let mut rebuilt = Rebuilt::new();
        while rebuilt.body.len() < want[i % RESOURCES].len() {
            rebuilt.apply(&s.next().response());
        }
        assert_eq!(rebuilt.body, want[i % RESOURCES]);
    }
}

#[test]
fn one_shot_subscribe_times_out_with_304() {
    let server = Server::start(&["--poll-timeout", "200ms"]);
    let mut c = server.client();
    let body = format!("--S\r\nGET /never\r\nWhen-Modified-After: {EPOCH}\r\n--S--\r\n");
    let start = std::time::Instant::now();
    let r = c.request(
        "POST",
        "/subscribe",
        &[("Content-Type", "multipart/digest; boundary=S")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 304);
    assert!(
        start.elapsed() >= Duration::from_millis(180),
        "answered after {:?}: it did not wait for the timeout",
        start.elapsed()
    );
    assert_eq!(c.get("/never").status, 404, "the connection carries on");
}

#[test]
fn a_stream_ending_under_a_stalled_reader_closes_when_the_reader_leaves() {
    let server = Server::start(&SMALL_BUFFERS);
    let mut w = server.client();
    w.put("/frame", "text/plain", b"");
    let mut stalled = small_window_client(&server);
    stalled.send_request(
        "GET",
        "/frame",
        &[("Accept", "multipart/x-mixed-replace")],
        b"",
    );
    server.wait_metric("halley_streams", 1.0);
    // A state far larger than the socket buffers: its write stays in flight (and,
    // alone, it is queued whatever the budget).
    let state = vec![b's'; 1024 * 1024];
    assert_eq!(w.put("/frame", "text/plain", &state).status, 204);
    assert!(server.metric("halley_stream_buffered_bytes") > 0.0);
    assert_eq!(server.metric("halley_summarised_total"), 0.0);
    // The delete ends the stream: the closing delimiter waits behind the stuck write.
    assert_eq!(w.delete("/frame").status, 204);
    // The reader leaves without reading (its unread data makes the close a reset).
    drop(stalled);
    server.wait_metric("halley_streams", 0.0);
    server.wait_metric("halley_open_connections", 1.0);
    server.wait_metric("halley_stream_buffered_bytes", 0.0);
}

#[test]
fn one_shot_subscribe_answers_each_resource_once_while_one_keeps_changing() {
    // Every resource is ready at once; one of them changes all the time (and streams
    // on it keep every worker receiving its changes). Each answer holds every resource
    // exactly once, however the changes race the owners' first answers.
    const QUIET: usize = 16;
    const ROUNDS: usize = 150;
    const CLIENTS: usize = 4;
    let server = Server::start(&["--threads", "2"]);
    let mut w = server.client();
    w.put("/hot", "text/plain", b"h");
    for i in 0..QUIET {
        w.put(&format!("/q/{i}"), "text/plain", b"q");
    }
    let _watchers: Vec<PartStream> = (0..8)
        .map(|_| open(&server, "/hot", "multipart/digest", &[]))
        .collect();
    server.wait_metric("halley_streams", 8.0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            let mut w = server.client();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(w.post("/hot", "text/plain", b"+").status, 204);
                }
            })
        })
        .collect();
    let mut body = format!("--S\r\nGET /hot\r\nWhen-Modified-After: {EPOCH}\r\n");
    for i in 0..QUIET {
        body += &format!("--S\r\nGET /q/{i}\r\nWhen-Modified-After: {EPOCH}\r\n");
    }
    body += "--S--\r\n";
    let mut want: Vec<String> = (0..QUIET).map(|i| format!("/q/{i}")).collect();
    want.push("/hot".into());
    want.sort_unstable();
    let subscribers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (body, want) = (body.clone(), want.clone());
            let mut c = server.client();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let r = c.request(
                        "POST",
                        "/subscribe",
                        &[("Content-Type", "multipart/digest; boundary=S")],
                        body.as_bytes(),
                    );
                    assert_eq!(r.status, 200);
                    let text = r.text();
                    let mut locations: Vec<&str> = text
                        .lines()
                        .filter_map(|l| l.strip_prefix("Content-Location: "))
                        .collect();
                    locations.sort_unstable();
                    assert_eq!(locations, want, "round {round}");
                }
            })
        })
        .collect();
    let results: Vec<_> = subscribers.into_iter().map(|t| t.join()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in writers {
        t.join().unwrap();
    }
    for r in results {
        r.unwrap();
    }
}
