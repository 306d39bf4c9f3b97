//! The fan-out fast path must agree with the full query, byte for byte.

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u8),
    Post(u8),
    Delete,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..4).prop_map(Op::Put),
        4 => (0u8..4).prop_map(Op::Post),
        1 => Just(Op::Delete),
    ]
}

fn write_op(op: &Op, json: bool) -> WriteOp {
    let ct = Some(Bytes::from_static(if json {
        b"application/json"
    } else {
        b"text/plain"
    }));
    match op {
        Op::Put(n) => WriteOp::Put {
            content_type: ct,
            body: Bytes::from(if json {
                format!("[{n}]")
            } else {
                "x".repeat(*n as usize)
            }),
        },
        Op::Post(n) => WriteOp::Post {
            content_type: ct,
            body: Bytes::from(if json {
                format!("{{\"n\":{n}}}")
            } else {
                format!("e{n};")
            }),
        },
        Op::Delete => WriteOp::Delete,
    }
}

proptest! {
    #[test]
    fn fast_path_agrees_with_full_query(
        ops in proptest::collection::vec(op(), 1..40),
        json in any::<bool>(),
        history in 1usize..6,
        clock_steps in proptest::collection::vec(0u64..3, 40),
    ) {
        let mut store = MemStore::new(history);
        let path = "/r";
        let mut now = 1_000u64;
        let mut earlier: Vec<Timestamp> = vec![Timestamp::ZERO];
        for (i, op) in ops.iter().enumerate() {
            // A watcher up to date right before this change.
            let since = match store.poll(path, Timestamp::from_micros(u64::MAX), None) {
                Answer::Wait { since } => since,
                Answer::Now(_) => unreachable!("nothing is after the end of time"),
            };
            let len = match store.get(path, None, None) {
                r if r.status == 200 => r.body.len(),
                _ => 0,
            };
            let ranges = [
                None,
                Some(RangeSpec::BytesFrom(len)),
                Some(RangeSpec::BytesFrom(len / 2)),
                Some(RangeSpec::BytesFrom(len + 1)),
                Some(RangeSpec::Updated(since)),
                Some(RangeSpec::Updated(*earlier.last().unwrap())),
                Some(RangeSpec::BytesClosed(0, 1)),
            ];
            now += clock_steps[i % clock_steps.len()]; // sometimes stands still
            let applied = store.write(path, write_op(op, json), Timestamp::from_micros(now));
            let Some(event) = applied.event else { continue };
            prop_assert_eq!(event.prev, since);
            for range in &ranges {
                let full = match store.poll(path, since, range.as_ref()) {
                    Answer::Now(reply) => Shaped::from_reply(reply),
                    Answer::Wait { .. } => { prop_assert!(false, "a change happened"); unreachable!() }
                };
                if let Some(fast) = event.answer_for(since, range.as_ref()) {
                    prop_assert_eq!(fast.status, full.status, "range {:?}", range);
                    prop_assert_eq!(&fast.head, &full.head, "range {:?}", range);
                    prop_assert_eq!(fast.body.to_vec(), full.body.to_vec(), "range {:?}", range);
                } else {
                    // Only an `updated` date before this change may need the full query.
                    prop_assert!(matches!(range, Some(RangeSpec::Updated(d)) if *d < since));
                }
            }
            earlier.push(since);
        }
    }
}

#[test]
fn payloads_containing_the_boundary_are_refused_even_across_appends() {
    let mut store = MemStore::with_forbidden(8, Bytes::from_static(b"halley-abc"));
    let put = |body: &'static [u8]| WriteOp::Put {
        content_type: Some(Bytes::from_static(b"text/plain")),
        body: Bytes::from_static(body),
    };
    let post = |body: &'static [u8]| WriteOp::Post {
        content_type: Some(Bytes::from_static(b"text/plain")),
        body: Bytes::from_static(body),
    };
    let now = Timestamp::from_micros(1);
    assert_eq!(
        store
            .write("/r", put(b"x\r\n--halley-abc\r\n"), now)
            .reply
            .status,
        400
    );
    assert_eq!(store.get("/r", None, None).status, 404, "nothing stored");
    assert_eq!(
        store.write("/r", put(b"start --hal"), now).reply.status,
        201
    );
    // The boundary split across two appends is caught at the seam.
    assert_eq!(
        store.write("/r", post(b"ley-abc tail"), now).reply.status,
        400
    );
    assert_eq!(
        store.write("/r", post(b"ley-abd fine"), now).reply.status,
        204
    );
    assert_eq!(
        store.get("/r", None, None).body.to_vec(),
        b"start --halley-abd fine"
    );
}
