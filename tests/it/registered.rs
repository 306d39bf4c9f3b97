//! Stream sockets registered with their worker's io_uring (`--registered-streams`):
//! deliveries are the same with and without registration, and a stream's registration
//! is released with it, as the kernel itself reports (`/proc/PID/fdinfo` of the rings).

use crate::support::*;

fn open_digest(server: &Server, path: &str) -> (PartStream, Client) {
    let mut c = server.client();
    c.send_request("GET", path, &[("Accept", "multipart/digest")], b"");
    // A second handle on the socket, so the test can hang up while a thread reads.
    let hangup = Client::from_stream(c.stream.try_clone().expect("clone socket"));
    (PartStream::open(c), hangup)
}

/// Every stream in `streams` gets `body` as its next part.
fn all_get(streams: &[&PartStream], body: &[u8]) {
    for s in streams {
        assert_eq!(s.next().response().body, body);
    }
}

/// Waits until the kernel lists `n` registered sockets (the event is the server's
/// gauge; the kernel's table is read after it, and must agree).
fn registered(server: &Server, n: usize) {
    server.wait_metric("halley_registered_streams", n as f64);
    assert_eq!(
        server.kernel_registered_sockets(),
        n,
        "the kernel's tables hold exactly the open registered streams"
    );
}

#[test]
fn stream_sockets_are_registered_and_released_with_their_streams() {
    let server = Server::start(&[]);
    let mut w = server.client();
    w.put("/r", "text/plain", b"0");
    let mut digests = Vec::new();
    for _ in 0..4 {
        let (s, hangup) = open_digest(&server, "/r");
        assert_eq!(
            s.next().response().text(),
            "0",
            "first part: the current state"
        );
        digests.push((s, hangup));
    }
    // Full-state streams, which the server itself ends when the resource is deleted.
    let replacing: Vec<PartStream> = (0..2)
        .map(|_| {
            let mut c = server.client();
            c.send_request("GET", "/r", &[("Accept", "multipart/x-mixed-replace")], b"");
            let s = PartStream::open(c);
            assert_eq!(s.next().body, b"0");
            s
        })
        .collect();
    server.wait_metric("halley_streams", 6.0);
    registered(&server, 6);
    w.put("/r", "text/plain", b"1");
    all_get(&digests.iter().map(|(s, _)| s).collect::<Vec<_>>(), b"1");
    for s in &replacing {
        assert_eq!(s.next().body, b"1");
    }

    // Two readers hang up: their registrations go with their streams.
    for (_, hangup) in digests.drain(..2) {
        hangup.close();
    }
    server.wait_metric("halley_streams", 4.0);
    registered(&server, 4);
    w.put("/r", "text/plain", b"2");
    all_get(&digests.iter().map(|(s, _)| s).collect::<Vec<_>>(), b"2");
    for s in &replacing {
        assert_eq!(s.next().body, b"2");
    }

    // The server ends the full-state streams (the resource is deleted): the same.
    w.delete("/r");
    for s in &replacing {
        s.expect_end();
    }
    for (s, _) in &digests {
        assert_eq!(s.next().response().status, 410, "digest streams carry on");
    }
    server.wait_metric("halley_streams", 2.0);
    registered(&server, 2);
    for (_, hangup) in digests {
        hangup.close();
    }
    server.wait_metric("halley_streams", 0.0);
    registered(&server, 0);
}

#[test]
fn streams_beyond_the_table_use_plain_descriptors() {
    for (slots, expect) in [("0", 0), ("2", 2)] {
        let server = Server::start(&["--threads", "1", "--registered-streams", slots]);
        let mut w = server.client();
        w.put("/r", "text/plain", b"a");
        let mut streams: Vec<(PartStream, Client)> = (0..4)
            .map(|_| {
                let (s, hangup) = open_digest(&server, "/r");
                assert_eq!(s.next().response().text(), "a");
                (s, hangup)
            })
            .collect();
        registered(&server, expect);
        w.put("/r", "text/plain", b"b");
        all_get(&streams.iter().map(|(s, _)| s).collect::<Vec<_>>(), b"b");

        // The first stream (registered, if any slot was) leaves; a new stream takes its
        // slot and every stream still gets every part, in order.
        streams.remove(0).1.close();
        server.wait_metric("halley_streams", 3.0);
        registered(&server, expect.saturating_sub(1));
        let (s, hangup) = open_digest(&server, "/r");
        assert_eq!(s.next().response().text(), "b");
        streams.push((s, hangup));
        registered(&server, expect);
        for i in 0..50 {
            let part = format!("v{i}");
            w.put("/r", "text/plain", part.as_bytes());
            all_get(
                &streams.iter().map(|(s, _)| s).collect::<Vec<_>>(),
                part.as_bytes(),
            );
        }
    }
}
