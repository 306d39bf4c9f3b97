//! Plain REST semantics (PROTOCOL.md §1) and timestamps (§2).

use crate::support::*;

#[test]
fn resource_lifecycle() {
    let server = Server::start(&[]);
    let mut c = server.client();

    let r = c.get("/doc");
    assert_eq!(r.status, 404, "never existed");

    let created = c.put("/doc", "text/plain", b"v1");
    assert_eq!(created.status, 201);
    assert_eq!(created.header("location"), Some("/doc"));
    let t1 = stamp(&created.last_modified());

    let r = c.get("/doc");
    assert_eq!((r.status, r.text().as_str()), (200, "v1"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("2"));
    assert_eq!(stamp(&r.last_modified()), t1);
    assert!(r.header("date").is_some());

    let head = c.request("HEAD", "/doc", &[], b"");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("2"))
    );
    assert!(head.body.is_empty());

    let replaced = c.put("/doc", "text/plain", b"version two");
    assert_eq!(replaced.status, 204);
    let t2 = stamp(&replaced.last_modified());
    assert!(t2 > t1);

    let appended = c.post("/doc", "text/plain", b"+more");
    assert_eq!(appended.status, 204);
    assert!(stamp(&appended.last_modified()) > t2);
    assert_eq!(c.get("/doc").text(), "version two+more");

    let deleted = c.delete("/doc");
    assert_eq!(deleted.status, 204);
    let td = stamp(&deleted.last_modified());
    let gone = c.get("/doc");
    assert_eq!(gone.status, 410);
    assert_eq!(stamp(&gone.last_modified()), td);
    assert_eq!(c.delete("/doc").status, 410, "deleting a deleted resource");
    assert_eq!(c.delete("/never").status, 404);

    // Re-creation after deletion gets a later stamp.
    let again = c.put("/doc", "text/plain", b"back");
    assert_eq!(again.status, 201);
    assert!(stamp(&again.last_modified()) > td);
}

#[test]
fn post_creates_and_appends() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let r = c.post("/log", "text/plain", b"line 1\n");
    assert_eq!(r.status, 201, "POST creates an absent resource");
    c.post("/log", "text/plain", b"line 2\n");
    assert_eq!(c.get("/log").text(), "line 1\nline 2\n");

    let r = c.post("/list", "application/json", b"{\"a\":1}");
    assert_eq!(r.status, 201);
    c.post("/list", "application/json", b"2");
    let body: serde_json::Value = serde_json::from_slice(&c.get("/list").body).unwrap();
    assert_eq!(body, serde_json::json!([{"a": 1}, 2]));
}

#[test]
fn json_codec_refusals_change_nothing() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.put("/arr", "application/json", b"[1]");
    let before = c.get("/arr");

    let r = c.post("/arr", "application/json", b"{not json");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid JSON"), "{}", r.text());
    let r = c.post("/arr", "text/plain", b"2");
    assert_eq!(r.status, 415);
    let after = c.get("/arr");
    assert_eq!(
        (after.text(), after.last_modified()),
        (before.text(), before.last_modified())
    );

    c.put("/obj", "application/json", b"{\"a\":1}");
    assert_eq!(c.post("/obj", "application/json", b"2").status, 409);
    assert_eq!(c.put("/bad", "application/json", b"[1,").status, 400);
    assert_eq!(c.get("/bad").status, 404, "a refused PUT creates nothing");
}

#[test]
fn stamps_are_unique_and_increasing_under_a_burst() {
    let server = Server::start(&[]);
    let mut c = server.client();
    // 500 pipelined writes in one go: many land in the same microsecond.
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend_from_slice(
            format!("POST /burst HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\n{}", i % 10)
                .as_bytes(),
        );
    }
    c.send(burst);
    let mut last = 0;
    for _ in 0..500 {
        let r = c.read_response();
        assert!(matches!(r.status, 201 | 204));
        let lm = r.last_modified();
        assert!(
            lm.contains('.') && lm.ends_with(" GMT"),
            "fractional stamp: {lm}"
        );
        let t = stamp(&lm);
        assert!(t > last, "stamps strictly increase: {t} after {last}");
        last = t;
    }
}

#[test]
fn ordinary_ranges_and_if_modified_since() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let lm = c.put("/r", "text/plain", b"0123456789").last_modified();
    let r = c.request("GET", "/r", &[("Range", "bytes=2-4")], b"");
    assert_eq!((r.status, r.text().as_str()), (206, "234"));
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = c.request("GET", "/r", &[("Range", "bytes=-3")], b"");
    assert_eq!((r.status, r.text().as_str()), (206, "789"));
    assert_eq!(r.header("content-range"), Some("bytes 7-9/10"));
    let r = c.request("GET", "/r", &[("Range", "bytes=10-")], b"");
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */10"))
    );
    let r = c.request("GET", "/r", &[("If-Modified-Since", &lm)], b"");
    assert_eq!(r.status, 304);
    let r = c.request("GET", "/r", &[("If-Modified-Since", EPOCH)], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn options_and_reserved_paths() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let r = c.request("OPTIONS", "/anything", &[], b"");
    assert_eq!(r.status, 204);
    assert!(r.header("allow").unwrap().contains("POST"));
    let r = c.get("/subscribe");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("POST"));
}
