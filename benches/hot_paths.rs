//! Micro-benchmarks of the hot paths. Run: `cargo bench --bench hot_paths`.
//! Figures go into docs/benchmarks.md as medians, with the command that produced them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use halley::body::Body;
use halley::http::frame::{Boundary, Frame};
use halley::http::range::RangeSpec;
use halley::http::request::{parse_head, HeadLimits};
use halley::store::{MemStore, Store, WriteOp};
use halley::time::{parse_http_date, Timestamp};
use halley::worker::group::GroupId;
use halley::worker::mailbox::{mailbox, Msg};
use halley::worker::watch::{Holder, WaitQuery, WaitState, WatchTable};

fn heads(c: &mut Criterion) {
    let poll = b"GET /quotes/ACME HTTP/1.1\r\nHost: feed.example\r\nUser-Agent: halley-load/0.1\r\nAccept: */*\r\nWhen-Modified-After: Wed, 26 Dec 2007 16:00:15.123456 GMT\r\nRange: bytes=1024-\r\n\r\n";
    let publish = b"POST /tape HTTP/1.1\r\nHost: feed.example\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n";
    let limits = HeadLimits::default();
    let mut g = c.benchmark_group("parse_head");
    g.throughput(Throughput::Elements(1));
    g.bench_function("long_poll_get", |b| {
        b.iter(|| parse_head(black_box(poll), &limits).unwrap())
    });
    g.bench_function("post_with_body_headers", |b| {
        b.iter(|| parse_head(black_box(publish), &limits).unwrap())
    });
    g.finish();
}

fn dates(c: &mut Criterion) {
    let ts = Timestamp::from_micros(1_198_684_815_123_456);
    let text = ts.to_http();
    let mut g = c.benchmark_group("date");
    g.bench_function("format_fractional", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            out.clear();
            black_box(ts).write_http(&mut out);
        })
    });
    g.bench_function("parse_fractional", |b| {
        b.iter(|| parse_http_date(black_box(text.as_bytes())).unwrap())
    });
    g.bench_function("parse_rfc850", |b| {
        b.iter(|| parse_http_date(black_box(b"Sunday, 06-Nov-94 08:49:37 GMT")).unwrap())
    });
    g.finish();
}

/// A store with one raw resource and a 100-byte append event on it.
fn append_event(store: &mut MemStore, n: u64) -> Arc<halley::store::ChangeEvent> {
    let applied = store.write(
        "/quotes/ACME",
        WriteOp::Post {
            content_type: Some(Bytes::from_static(b"text/plain")),
            body: Bytes::from(vec![b'x'; 100]),
        },
        Timestamp::from_micros(1_700_000_000_000_000 + n),
    );
    applied.event.expect("a change")
}

fn frames(c: &mut Criterion) {
    let boundary = Boundary::random();
    let mut g = c.benchmark_group("frame");
    let head = b"HTTP/1.1 206 Partial Content\r\nContent-Location: /quotes/ACME\r\nLast-Modified: Wed, 26 Dec 2007 16:00:15.123456 GMT\r\nContent-Range: bytes 1000-1099/1100\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n";
    let body = Body::from(Bytes::from(vec![b'x'; 100]));
    g.bench_function("digest_part_100b", |b| {
        b.iter(|| Frame::digest(black_box(head), &body, &boundary))
    });
    let mut store = MemStore::new(1024);
    let mut n = 0;
    g.bench_function("change_event_digest_frame_100b", |b| {
        b.iter_batched(
            || {
                n += 1;
                let since = store.poll("/quotes/ACME", Timestamp::from_micros(u64::MAX), None);
                (since, append_event(&mut store, n))
            },
            |(since, ev)| {
                let since = match since {
                    halley::store::Answer::Wait { since } => since,
                    halley::store::Answer::Now(_) => unreachable!(),
                };
                ev.digest_frame(
                    since,
                    Some(&RangeSpec::BytesFrom(ev.body.len() - 100)),
                    &boundary,
                )
                .map(|frame| frame.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Waking 10,000 stream waiters of one resource on one worker: walk the wait list, pick
/// each waiter's answer (the shared frame, built once), move its position forward.
fn wake(c: &mut Criterion) {
    const WAITERS: usize = 10_000;
    let boundary = Boundary::random();
    let mut g = c.benchmark_group("wake");
    g.throughput(Throughput::Elements(WAITERS as u64));
    g.bench_function("10k_stream_waiters_one_change", |b| {
        let mut store = MemStore::new(1024);
        let mut n = 0u64;
        let first = append_event(&mut store, 0);
        let path: Arc<str> = first.path.clone();
        let mut table = WatchTable::default();
        let ids: Vec<_> = (0..WAITERS)
            .map(|i| {
                table.insert(
                    path.clone(),
                    WaitState::Parked { since: first.ts },
                    WaitQuery {
                        t: first.ts,
                        range: Some(RangeSpec::BytesFrom(first.body.len())),
                    },
                    Holder::Group(GroupId::detached(i as u32)),
                )
            })
            .collect();
        drop(ids);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let ev = append_event(&mut store, n);
                let start = Instant::now();
                let ids = table.ids_for(&ev.path).unwrap();
                let mut delivered = 0usize;
                for id in ids {
                    let w = table.get_mut(id).unwrap();
                    let WaitState::Parked { since } = w.state else {
                        continue;
                    };
                    if let Some(frame) = ev.digest_frame(since, w.query.range.as_ref(), &boundary) {
                        delivered += frame.len();
                        w.state = WaitState::Parked { since: ev.ts };
                        w.query.range = Some(RangeSpec::BytesFrom(ev.body.len()));
                    }
                }
                total += start.elapsed();
                black_box(delivered);
            }
            total
        })
    });
    g.finish();
}

/// One change event from an owner thread to a watcher thread's runtime: crossbeam send,
/// `Notify` wake-up, the watcher's inbox drain, and back (round trip / 2 is one hop).
fn cross_worker(c: &mut Criterion) {
    let (to_watcher, inbox) = mailbox();
    let (to_owner, owner_inbox) = mailbox();
    let mut store = MemStore::new(16);
    let ev = append_event(&mut store, 1);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            loop {
                inbox.notify.notified().await;
                while let Ok(msg) = inbox.rx.try_recv() {
                    if let Msg::Changed(ev) = msg {
                        to_owner.send(Msg::Changed(ev));
                    }
                }
            }
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("cross_worker");
    g.bench_function("change_round_trip", |b| {
        b.iter(|| {
            to_watcher.send(Msg::Changed(ev.clone()));
            rt.block_on(async {
                loop {
                    owner_inbox.notify.notified().await;
                    if owner_inbox.rx.try_recv().is_ok() {
                        break;
                    }
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, heads, dates, frames, wake, cross_worker);
criterion_main!(benches);
