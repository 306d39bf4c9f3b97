//! `When-Modified-After` long polls (PROTOCOL.md §3).

use std::time::Duration;

use crate::support::*;

/// Sends a long poll and waits until the server reports it parked.
fn park(server: &Server, path: &str, wma: &str, range: Option<&str>) -> Client {
    let before = server.metric("halley_parked");
    let mut c = server.client();
    let mut headers = vec![("When-Modified-After", wma)];
    if let Some(r) = range {
        headers.push(("Range", r));
    }
    c.send_request("GET", path, &headers, b"");
    server.wait_metric("halley_parked", before + 1.0);
    c
}

#[test]
fn parked_poll_is_released_by_a_put_from_another_connection() {
    let server = Server::start(&[]);
    let mut writer = server.client();
    let t0 = writer.put("/news", "text/plain", b"old").last_modified();
    let mut poll = park(&server, "/news", &t0, None);
    assert!(
        poll.nothing_within(Duration::from_millis(50)),
        "nothing changed yet"
    );

    let t1 = writer
        .put("/news", "text/plain", b"Hello World!")
        .last_modified();
    let r = poll.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "Hello World!"));
    assert_eq!(r.last_modified(), t1);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    server.wait_metric("halley_parked", 0.0);

    // The same connection polls again from the stamp it got.
    poll.send_request("GET", "/news", &[("When-Modified-After", &t1)], b"");
    server.wait_metric("halley_parked", 1.0);
    writer.put("/news", "text/plain", b"third");
    assert_eq!(poll.read_response().text(), "third");
}

#[test]
fn changed_after_t_answers_at_once() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let t1 = c.put("/x", "text/plain", b"a").last_modified();
    c.put("/x", "text/plain", b"b");
    let r = c.request("GET", "/x", &[("When-Modified-After", &t1)], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
    let r = c.request("GET", "/x", &[("When-Modified-After", EPOCH)], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
}

#[test]
fn appends_give_206_and_replaces_give_200() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t0 = w
        .put("/feed", "text/plain", b"Hello World!")
        .last_modified();

    for range in ["bytes=12-", "bytes 12-", "bytes 12-/*"] {
        let t = w.get("/feed").last_modified();
        let len = w.get("/feed").body.len();
        let mut poll = park(
            &server,
            "/feed",
            &t,
            Some(&range.replace("12", &len.to_string())),
        );
        let t_new = w
            .post("/feed", "text/plain", b"How are you?")
            .last_modified();
        let r = poll.read_response();
        assert_eq!(r.status, 206, "range form {range:?}");
        assert_eq!(r.text(), "How are you?");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {}-{}/{}", len, len + 11, len + 12).as_str())
        );
        assert_eq!(r.last_modified(), t_new);
    }

    let t = w.get("/feed").last_modified();
    let len = w.get("/feed").body.len();
    let mut poll = park(&server, "/feed", &t, Some(&format!("bytes={len}-")));
    w.put("/feed", "text/plain", b"replaced");
    let r = poll.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "replaced"),
        "a replace cannot be a 206"
    );
    let _ = t0;
}

#[test]
fn updated_range_on_a_json_array_gives_the_new_elements() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t0 = w
        .put("/trades", "application/json", b"[{\"px\":1}]")
        .last_modified();
    let range = format!("updated {t0}-");
    let mut poll = park(&server, "/trades", &t0, Some(&range));
    let t1 = w
        .post("/trades", "application/json", b"{\"px\":2}")
        .last_modified();
    let r = poll.read_response();
    assert_eq!(r.status, 206);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!([{"px": 2}]));
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("updated {t0}-/{t1}")
    );

    // Resume later: everything appended since t0, as one array.
    w.post("/trades", "application/json", b"{\"px\":3}");
    let r = w.request(
        "GET",
        "/trades",
        &[("When-Modified-After", &t0), ("Range", &range)],
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!([{"px": 2}, {"px": 3}]));
    // A byte range cannot describe a JSON element append: full body.
    let r = w.request(
        "GET",
        "/trades",
        &[("When-Modified-After", &t0), ("Range", "bytes=10-")],
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (r.status, v),
        (200, serde_json::json!([{"px": 1}, {"px": 2}, {"px": 3}]))
    );
    assert_eq!(r.header("content-range"), None);
}

#[test]
fn delete_gives_410_and_absent_resources_wait_for_creation() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let mut waiting = park(&server, "/later", EPOCH, None);
    let tc = w.put("/later", "text/plain", b"born").last_modified();
    let r = waiting.read_response();
    assert_eq!(
        (r.status, r.text().as_str(), r.last_modified()),
        (200, "born", tc.clone())
    );

    let mut poll = park(&server, "/later", &tc, None);
    let td = w.delete("/later").last_modified();
    let r = poll.read_response();
    assert_eq!(r.status, 410);
    assert_eq!(r.last_modified(), td);

    // After the delete, a poll from the deletion stamp waits for re-creation.
    let mut poll = park(&server, "/later", &td, None);
    w.post("/later", "text/plain", b"again");
    let r = poll.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "again"),
        "watchers see a creation as a replace"
    );
}

#[test]
fn resume_after_disconnect_collects_everything_missed() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t0 = w.put("/tape", "text/plain", b"start;").last_modified();
    let poll = park(&server, "/tape", &t0, Some("bytes=6-"));
    poll.close(); // the client loses its connection
    server.wait_metric("halley_parked", 0.0);
    for i in 0..50 {
        w.post("/tape", "text/plain", format!("t{i};").as_bytes());
    }
    let mut back = server.client();
    let r = back.request(
        "GET",
        "/tape",
        &[("When-Modified-After", &t0), ("Range", "bytes=6-")],
        b"",
    );
    assert_eq!(r.status, 206);
    let want: String = (0..50).map(|i| format!("t{i};")).collect();
    assert_eq!(r.text(), want, "every append since T, in order, in one 206");
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 6-{}/{}", 6 + want.len() - 1, 6 + want.len())
    );
}

#[test]
fn resume_beyond_history_gives_the_full_state() {
    let server = Server::start(&["--history", "4"]);
    let mut w = server.client();
    let t0 = w.put("/short", "text/plain", b"s;").last_modified();
    for i in 0..10 {
        w.post("/short", "text/plain", format!("{i};").as_bytes());
    }
    let r = w.request(
        "GET",
        "/short",
        &[("When-Modified-After", &t0), ("Range", "bytes=2-")],
        b"",
    );
    assert_eq!(
        r.status, 200,
        "history no longer reaches T: full state, never a gap"
    );
    assert_eq!(r.text(), "s;0;1;2;3;4;5;6;7;8;9;");
}

#[test]
fn poll_timeout_answers_304_with_the_clients_stamp() {
    let server = Server::start(&["--poll-timeout", "200ms"]);
    let mut w = server.client();
    let t = w.put("/quiet", "text/plain", b"x").last_modified();
    // A stamp with more than six fraction digits is echoed normalised (truncated).
    let sent = t.replace(" GMT", "999 GMT");
    let mut poll = server.client();
    let start = std::time::Instant::now();
    poll.send_request("GET", "/quiet", &[("When-Modified-After", &sent)], b"");
    let r = poll.read_response();
    assert_eq!(r.status, 304);
    assert!(
        start.elapsed() >= Duration::from_millis(180),
        "answered after {:?}: it did not wait for the timeout",
        start.elapsed()
    );
    assert_eq!(r.last_modified(), t);
    // The connection stays usable.
    assert_eq!(poll.get("/quiet").status, 200);
}

#[test]
fn head_long_poll_answers_without_a_body() {
    let server = Server::start(&[]);
    let mut w = server.client();
    let t = w.put("/h", "text/plain", b"abc").last_modified();
    let mut poll = server.client();
    poll.send_request("HEAD", "/h", &[("When-Modified-After", &t)], b"");
    server.wait_metric("halley_parked", 1.0);
    w.put("/h", "text/plain", b"abcdef");
    let r = poll.read_response_to("HEAD");
    assert_eq!((r.status, r.header("content-length")), (200, Some("6")));
    assert_eq!(
        poll.get("/h").text(),
        "abcdef",
        "no stray body bytes on the connection"
    );
}

#[test]
fn malformed_when_modified_after_is_400_with_a_reason() {
    let server = Server::start(&[]);
    let mut c = server.client();
    let r = c.request("GET", "/x", &[("When-Modified-After", "yesterday")], b"");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("When-Modified-After"), "{}", r.text());
    let r = c.request(
        "GET",
        "/x",
        &[("When-Modified-After", "Wed, 31 Feb 2007 16:00:15 GMT")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().to_lowercase().contains("day"), "{}", r.text());
    // The connection is still fine after a 400 of this kind.
    assert_eq!(c.get("/x").status, 404);
}

#[test]
fn obsolete_date_forms_are_accepted() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.put("/o", "text/plain", b"x");
    for date in [
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun, 06 Nov 1994 08:49:37.5 GMT",
    ] {
        let r = c.request("GET", "/o", &[("When-Modified-After", date)], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "x"), "{date}");
    }
    // Each form parses to its own instant, not just to some past date: the same forms
    // for a date after the resource's stamp make the poll wait (a two-digit year within
    // 50 years from now is in the future, RFC 9110 §5.6.7).
    for date in [
        "Friday, 06-Nov-37 08:49:37 GMT",
        "Fri Nov  6 08:49:37 2037",
        "Fri, 06 Nov 2037 08:49:37.5 GMT",
    ] {
        let mut poll = server.client();
        poll.send_request("GET", "/o", &[("When-Modified-After", date)], b"");
        assert!(
            poll.nothing_within(Duration::from_millis(100)),
            "{date} is after the stamp: the poll waits"
        );
    }
}

#[test]
fn polls_that_leave_unanswered_unregister_their_paths() {
    // Long polls on paths that never change, spread over both workers: once they have
    // all timed out or hung up, no worker is registered with any owner for them any
    // more (a client inventing paths must not grow the server's watch tables).
    const PATHS: usize = 60;
    let server = Server::start(&["--poll-timeout", "300ms", "--threads", "2"]);
    // One poll on each of PATHS made-up paths starting with `prefix`.
    let polls = |prefix: &str| -> Vec<Client> {
        (0..PATHS)
            .map(|i| {
                let mut c = server.client();
                let path = format!("/made-up/{prefix}{i}");
                c.send_request("GET", &path, &[("When-Modified-After", EPOCH)], b"");
                c
            })
            .collect()
    };
    let timing_out = polls("t");
    let hanging_up = polls("h");
    server.wait_metric("halley_parked", (2 * PATHS) as f64);
    // A poll parks on its own worker at once; its registration reaches a remote owner
    // by message a moment later, so wait for the owners' count rather than read it.
    server.wait_metric("halley_watched_resources", (2 * PATHS) as f64);
    for c in hanging_up {
        c.close();
    }
    for mut c in timing_out {
        assert_eq!(c.read_response().status, 304);
    }
    server.wait_metric("halley_parked", 0.0);
    server.wait_metric("halley_watched_resources", 0.0);

    // The registration comes back for the next poll, which a change still answers.
    let mut poll = server.client();
    poll.send_request("GET", "/made-up/t7", &[("When-Modified-After", EPOCH)], b"");
    server.wait_metric("halley_watched_resources", 1.0);
    server.client().put("/made-up/t7", "text/plain", b"now");
    let r = poll.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "now"));
}
