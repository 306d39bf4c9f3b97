//! HTTP/1.1 connection handling (RFC 9112): persistence, pipelining, 100-continue, 1.0 clients.

use crate::support::*;

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut c = server.client();
    // Writes and reads for resources on both workers, all in one send.
    let mut burst = String::new();
    for i in 0..20 {
        burst.push_str(&format!(
            "PUT /p{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\nv{i}",
            format!("v{i}").len()
        ));
        burst.push_str(&format!("GET /p{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    c.send(burst);
    for i in 0..20 {
        assert_eq!(c.read_response().status, 201);
        let r = c.read_response();
        assert_eq!((r.status, r.text()), (200, format!("v{i}")));
    }
}

#[test]
fn pipelining_behind_a_parked_request_keeps_order() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/other", "text/plain", b"other body");
    let mut c = server.client();
    c.send(format!(
        "GET /wait HTTP/1.1\r\nHost: t\r\nWhen-Modified-After: {EPOCH}\r\n\r\nGET /other HTTP/1.1\r\nHost: t\r\n\r\n"
    ));
    server.wait_metric("halley_parked", 1.0);
    assert!(
        c.nothing_within(std::time::Duration::from_millis(50)),
        "the second answer must wait for the first"
    );
    w.put("/wait", "text/plain", b"released");
    let first = c.read_response();
    assert_eq!(first.text(), "released");
    let second = c.read_response();
    assert_eq!(second.text(), "other body");
}

#[test]
fn expect_100_continue() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send("PUT /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_response();
    assert_eq!(
        interim.status, 100,
        "the server asks for the body before it is sent"
    );
    c.send("hello");
    assert_eq!(c.read_response().status, 201);
    assert_eq!(c.get("/e").text(), "hello");
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let r = c.request("GET", "/none", &[("Connection", "close")], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_closed();
}

#[test]
fn http10_clients() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/old", "text/plain", b"one-point-oh");

    let mut c = server.client();
    c.send("GET /old HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "one-point-oh"));
    c.expect_closed();

    let mut k = server.client();
    k.send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = k.read_response();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    k.send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(k.read_response().status, 200);
}

#[test]
fn chunked_request_bodies() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send("PUT /c HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n");
    assert_eq!(c.read_response().status, 201);
    assert_eq!(c.get("/c").text(), "hello world");
}

#[test]
fn every_response_has_a_date() {
    let server = Server::start(&[]);
    let mut c = server.client();
    for r in [
        c.get("/missing"),
        c.put("/d", "text/plain", b"x"),
        c.get("/d"),
    ] {
        let date = r.header("date").expect("Date header");
        assert!(
            halley::time::parse_http_date(date.as_bytes()).is_ok(),
            "{date}"
        );
    }
}

#[test]
fn absolute_form_targets() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.put("/abs", "text/plain", b"x");
    let r = c.request("GET", "http://example.com/abs?q=1", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "x"));
}
