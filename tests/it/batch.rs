//! `POST /batch` (PROTOCOL.md §6).

use crate::support::*;

fn part(method: &str, path: &str, content_type: &str, body: &str) -> String {
    format!(
        "--B\r\nContent-Type: application/http; msgtype=request\r\n\r\n{method} {path} HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}\r\n",
        body.len()
    )
}

fn batch(c: &mut Client, parts: &[String]) -> Vec<String> {
    let mut body: String = parts.concat();
    body.push_str("--B--\r\n");
    let r = c.request(
        "POST",
        "/batch",
        &[("Content-Type", "multipart/digest; boundary=B")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    python_parts(r.header("content-type").unwrap(), &r.body)
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect()
}

#[test]
fn a_batch_applies_in_order_and_answers_each_sub_request() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.put("/q/2", "text/plain", b"old");
    let answers = batch(
        &mut c,
        &[
            part("PUT", "/q/1", "text/plain", "one"),
            part("POST", "/q/1", "text/plain", "+more"),
            part("POST", "/q/2", "text/plain", "!"),
            part("DELETE", "/q/2", "text/plain", ""),
            part("PUT", "/q/3", "application/json", "[1]"),
            part("POST", "/q/3", "application/json", "{broken"),
            part("GET", "/q/1", "text/plain", ""),
            part("POST", "/q/3", "application/json", "2"),
        ],
    );
    assert_eq!(answers.len(), 8);
    let status = |a: &String| a[9..12].to_string();
    let statuses: Vec<String> = answers.iter().map(status).collect();
    assert_eq!(
        statuses,
        ["201", "204", "204", "204", "201", "400", "400", "204"]
    );
    for (a, path) in answers.iter().zip([
        "/q/1", "/q/1", "/q/2", "/q/2", "/q/3", "/q/3", "/q/1", "/q/3",
    ]) {
        assert!(a.contains(&format!("Content-Location: {path}\r\n")), "{a}");
    }
    for a in answers.iter().filter(|a| !a.starts_with("HTTP/1.1 400")) {
        assert!(a.contains("Last-Modified: "), "{a}");
    }
    assert_eq!(c.get("/q/1").text(), "one+more");
    assert_eq!(c.get("/q/2").status, 410);
    assert_eq!(
        c.get("/q/3").text(),
        "[1,2]",
        "the failed part changed nothing; the later one applied"
    );
    // Every change of one resource got its own, increasing stamp.
    let lm = |a: &String| {
        stamp(
            a.split("Last-Modified: ")
                .nth(1)
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap(),
        )
    };
    assert!(lm(&answers[1]) > lm(&answers[0]));
}

#[test]
fn a_subscriber_of_several_resources_gets_a_whole_batch_in_one_write() {
    let server = Server::start(&["--threads", "1"]);
    let mut w = server.client();
    for k in 0..5 {
        w.put(&format!("/p/{k}"), "text/plain", b"");
    }
    let sub: String = (0..5)
        .map(|k| format!("--S\r\nGET /p/{k}\r\n"))
        .collect::<String>()
        + "--S--\r\n";
    let mut c = server.client();
    c.send_request(
        "POST",
        "/subscribe",
        &[
            ("Accept", "multipart/digest"),
            ("Range", "bytes=0-"),
            ("Content-Type", "multipart/digest; boundary=S"),
        ],
        sub.as_bytes(),
    );
    let s = PartStream::open(c);
    for _ in 0..5 {
        s.next();
    }
    server.wait_metric("halley_stream_parts_total", 5.0);
    // Wait until the first parts' write is accounted for, so the next write is the batch's own.
    server.wait_metric("halley_stream_buffered_bytes", 0.0);
    let writes_before = server.metric("halley_stream_writes_total");
    let parts: Vec<String> = (0..5)
        .map(|k| {
            part(
                "POST",
                &format!("/p/{k}"),
                "text/plain",
                &format!("tick{k}"),
            )
        })
        .collect();
    assert_eq!(batch(&mut w, &parts).len(), 5);
    let mut seen: Vec<String> = (0..5).map(|_| s.next().response().text()).collect();
    seen.sort();
    assert_eq!(seen, ["tick0", "tick1", "tick2", "tick3", "tick4"]);
    assert_eq!(
        server.metric("halley_stream_writes_total") - writes_before,
        1.0,
        "the tick went out in one write"
    );
}

#[test]
fn batch_refusals() {
    let server = Server::start(&["--max-subrequests", "2"]);
    let mut c = server.client();
    assert_eq!(
        c.request("POST", "/batch", &[("Content-Type", "text/plain")], b"x")
            .status,
        415
    );
    let three = [
        part("PUT", "/a", "text/plain", "1"),
        part("PUT", "/b", "text/plain", "2"),
        part("PUT", "/c", "text/plain", "3"),
    ]
    .concat()
        + "--B--\r\n";
    let r = c.request(
        "POST",
        "/batch",
        &[("Content-Type", "multipart/digest; boundary=B")],
        three.as_bytes(),
    );
    assert_eq!(r.status, 413);
    assert_eq!(c.get("/a").status, 404, "a refused batch applies nothing");
    assert_eq!(c.get("/batch").status, 405);
}
