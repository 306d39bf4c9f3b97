//! Bad input (PROTOCOL.md §9): a clear status, the connection's fate per RFC 9112, and
//! no effect on anyone else.

use std::time::{Duration, Instant};

use crate::support::*;

/// Sends raw bytes; expects `status` and then the connection closed.
fn rejected_and_closed(server: &Server, raw: &[u8], status: u16) {
    let mut c = server.client();
    c.send(raw);
    let r = c.read_response();
    assert_eq!(
        r.status,
        status,
        "for {:?}: {}",
        String::from_utf8_lossy(raw),
        r.text()
    );
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_closed();
}

#[test]
fn malformed_heads_are_400_and_close() {
    let server = Server::start(&[]);
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: folded\r\n continuation\r\n\r\n", // obs-fold
        b"GET / HTTP/1.1\r\nHost: t\r\nX: bare\rcr\r\n\r\n",                // bare CR
        b"GET / HTTP/1.1\rHost: t\r\n\r\n",                                 // bare CR line end
        b"GET / HTTP/1.1\r\n\r\n",                                          // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                    // two Hosts
        b"GET nopath HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for raw in cases {
        rejected_and_closed(&server, raw, 400);
    }
}

#[test]
fn smuggling_framing_is_refused_and_closed() {
    let server = Server::start(&[]);
    // CL + TE.
    rejected_and_closed(
        &server,
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    // Conflicting Content-Length.
    rejected_and_closed(
        &server,
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    );
    // Bad chunk size, and a bare LF inside chunked framing.
    rejected_and_closed(
        &server,
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    );
    rejected_and_closed(
        &server,
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        400,
    );
    // An unknown transfer coding.
    rejected_and_closed(
        &server,
        b"POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    );
    // Nothing was written by any of these.
    assert_eq!(server.client().get("/s").status, 404);
}

#[test]
fn size_limits() {
    let server = Server::start(&[
        "--max-body-bytes",
        "1KiB",
        "--max-header-bytes",
        "4KiB",
        "--max-target-bytes",
        "1KiB",
    ]);
    let big_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(2000));
    rejected_and_closed(&server, big_target.as_bytes(), 414);
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "v".repeat(5000)
    );
    rejected_and_closed(&server, big_head.as_bytes(), 431);
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    rejected_and_closed(
        &server,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
        431,
    );
    let big_body = format!(
        "PUT /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    rejected_and_closed(&server, big_body.as_bytes(), 413);
    let big_chunked = format!(
        "PUT /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        "x".repeat(1024),
        "y".repeat(1024)
    );
    rejected_and_closed(&server, big_chunked.as_bytes(), 413);
    // Exactly at the limit is fine.
    let mut c = server.client();
    assert_eq!(c.put("/b", "text/plain", &[b'z'; 1024]).status, 201);
}

#[test]
fn unknown_and_unsupported_methods() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let r = c.request("BREW", "/pot", &[], b"");
    assert_eq!(r.status, 501);
    let r = c.request("PATCH", "/pot", &[], b"");
    assert_eq!(r.status, 501);
    let r = c.request("PUT", "/subscribe", &[], b"x");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some());
    // These keep the connection usable.
    assert_eq!(c.get("/pot").status, 404);
    rejected_and_closed(&server, b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505);
    rejected_and_closed(
        &server,
        b"PUT /x HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx",
        417,
    );
}

#[test]
fn slow_heads_are_cut_off() {
    let server = Server::start(&["--header-timeout", "300ms"]);
    let mut slow = server.client();
    let start = Instant::now();
    slow.send("GET / HTTP/1.1\r\nHost: t\r\n"); // ... and never finishes the head
    let r = slow.read_response();
    assert_eq!(r.status, 408);
    slow.expect_closed();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_secs(5),
        "cut off after {waited:?}, not near the 300 ms header timeout"
    );

    // Trickling bytes does not extend the deadline: a slow writer sends one byte
    // every 20 ms (the behaviour under test) while we block on the answer.
    let mut trickle = server.client();
    let mut writer = trickle.stream.try_clone().unwrap();
    let start = Instant::now();
    let pacer = std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a').take(500))
        {
            if std::io::Write::write_all(&mut writer, &[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let r = trickle.read_response();
    assert_eq!(
        r.status, 408,
        "a trickling client is cut off at the header timeout"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_secs(5),
        "cut off after {waited:?}, not near the 300 ms header timeout"
    );
    drop(trickle);
    pacer.join().unwrap();
}

#[test]
fn bad_input_does_not_disturb_other_connections() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t = w.put("/calm", "text/plain", b"before").last_modified();
    let mut poll = server.client();
    poll.send_request("GET", "/calm", &[("When-Modified-After", &t)], b"");
    server.wait_metric("halley_parked", 1.0);

    let garbage: &[&[u8]] = &[
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /calm HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
        b"\xff\xfe\xfd",
        b"GET /calm HTTP/1.1\r\nHost: t\r\nWhen-Modified-After: \xff\r\n\r\n",
    ];
    for raw in garbage {
        let mut c = server.client();
        c.send(raw);
        c.stream.shutdown(std::net::Shutdown::Write).ok();
        let mut answer = Vec::new();
        std::io::Read::read_to_end(&mut c.stream, &mut answer).expect("the server closes");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 ") || answer.starts_with("HTTP/1.1 413 "),
            "{raw:?} answered {answer:?}"
        );
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");
    }
    // Half a request, then the client vanishes.
    let mut half = server.client();
    half.send("POST /calm HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly some");
    half.close();

    assert_eq!(
        w.get("/calm").text(),
        "before",
        "nothing was written by bad input"
    );
    w.put("/calm", "text/plain", b"after");
    let r = poll.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "after"),
        "the parked client still gets its update"
    );
}
