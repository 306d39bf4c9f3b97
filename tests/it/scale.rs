//! Many parked clients; freeing waiters; the connection ceiling.

use crate::support::*;

#[test]
fn twelve_hundred_parked_clients_on_several_resources_all_get_their_update() {
    const CLIENTS: usize = 1200;
    const RESOURCES: usize = 6;
    let server = Server::start(&[]);
    let mut w = server.client();
    let stamps: Vec<String> = (0..RESOURCES)
        .map(|r| {
            w.put(&format!("/res/{r}"), "text/plain", b"v0")
                .last_modified()
        })
        .collect();
    let mut clients: Vec<(usize, Client)> = (0..CLIENTS)
        .map(|i| {
            let r = i % RESOURCES;
            let mut c = server.client();
            let range = "bytes=2-".to_string();
            c.send_request(
                "GET",
                &format!("/res/{r}"),
                &[("When-Modified-After", &stamps[r]), ("Range", &range)],
                b"",
            );
            (r, c)
        })
        .collect();
    server.wait_metric("halley_parked", CLIENTS as f64);

    let mut new_stamps = Vec::new();
    for r in 0..RESOURCES {
        new_stamps.push(
            w.post(
                &format!("/res/{r}"),
                "text/plain",
                format!("+update{r}").as_bytes(),
            )
            .last_modified(),
        );
    }
    for (r, c) in clients.iter_mut() {
        let resp = c.read_response();
        assert_eq!(resp.status, 206);
        assert_eq!(
            resp.text(),
            format!("+update{r}"),
            "each client gets its own resource's change"
        );
        assert_eq!(resp.last_modified(), new_stamps[*r]);
    }
    server.wait_metric("halley_parked", 0.0);
    assert_eq!(server.metric("halley_deliveries_total"), CLIENTS as f64);
}

#[test]
fn waiters_are_freed_when_clients_disconnect() {
    let server = Server::start(&[]);
    let clients: Vec<Client> = (0..300)
        .map(|i| {
            let mut c = server.client();
            c.send_request(
                "GET",
                &format!("/gone/{}", i % 5),
                &[("When-Modified-After", EPOCH)],
                b"",
            );
            c
        })
        .collect();
    server.wait_metric("halley_parked", 300.0);
    for c in clients {
        c.close();
    }
    server.wait_metric("halley_parked", 0.0);
    server.wait_metric("halley_hangups_total", 300.0);
    server.wait_metric("halley_open_connections", 0.0);

    // A write to those resources now reaches nobody and breaks nothing.
    let mut w = server.client();
    assert_eq!(w.put("/gone/0", "text/plain", b"x").status, 201);
    assert_eq!(server.metric("halley_deliveries_total"), 0.0);
}

#[test]
fn connection_ceiling_refuses_cleanly() {
    let server = Server::start(&["--max-connections", "3"]);
    let held: Vec<Client> = (0..3).map(|_| server.client()).collect();
    server.wait_metric("halley_open_connections", 3.0);
    let mut extra = server.client();
    let r = extra.read_response();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    extra.expect_closed();
    // The held connections still work.
    let mut first = held.into_iter().next().unwrap();
    assert_eq!(first.get("/x").status, 404);
}

#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    // A hard limit of 64 descriptors; the connection ceiling is set above it on purpose
    // so that accept itself runs out of descriptors.
    let server = Server::start_limited(Some(64), &["--max-connections", "1000"]);
    let mut keeper = server.client();
    assert_eq!(keeper.put("/fd", "text/plain", b"v0").status, 201);

    // Open more connections than the server can accept; each asks for a long poll.
    let waiting: Vec<Client> = (0..80)
        .map(|_| {
            let mut c = server.client();
            c.send_request("GET", "/fd", &[("When-Modified-After", EPOCH)], b"");
            c
        })
        .collect();
    // The ones accepted are answered at once (the resource changed after the epoch);
    // the rest sit in the backlog while accept fails with EMFILE.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.metric("halley_accept_errors_total") == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "accept never ran out of descriptors"
        );
    }
    // Existing clients are still served while descriptors are exhausted.
    assert_eq!(keeper.get("/fd").text(), "v0");
    // The accept loop backs off instead of spinning: over half a second (the window
    // we observe), a spinning loop would fail thousands of times.
    let before = server.metric("halley_accept_errors_total");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let during = server.metric("halley_accept_errors_total") - before;
    assert!(
        during < 20.0,
        "accept failed {during} times in 500 ms: spinning"
    );

    // Free descriptors: every waiting client is eventually accepted and answered. Each
    // reads on its own (as real clients do) and closes when answered, freeing a
    // descriptor for the backlog; reading them in a fixed order could wait on a client
    // queued at one worker while the descriptors sit with answered clients of the other.
    drop(keeper);
    let readers: Vec<_> = waiting
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let r = c.read_response();
                (r.status, r.text())
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = readers
        .into_iter()
        .map(|t| t.join().expect("reader"))
        .collect();
    assert_eq!(answers.len(), 80);
    assert!(
        answers.iter().all(|(s, t)| *s == 200 && t == "v0"),
        "{answers:?}"
    );
}
