//! `ticker`: a stock-ticker feed for demos. Quotes are state (`PUT /quotes/<SYM>`, so a
//! slow reader gets the newest quote), trades are a log (`POST /tape`, a JSON array, so a
//! client can ask for `Range: updated <date>-` and resume without gaps).

use crate::cli::{Target, TickerArgs};
use crate::clock::Rng;
use crate::http::{write_request, Conn};
use crate::publisher::BATCH_BOUNDARY;
use crate::stats::{new_hist, record_ns, Percentiles};
use crate::{clock, output};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NAMES: [&str; 24] = [
    "ACME", "GLOBX", "INITC", "UMBRL", "WAYNE", "STARK", "TYREL", "CYBRD", "OSCRP", "VANDL",
    "HOOLI", "PIEDP", "SOYLN", "WONKA", "MASSV", "OCORP", "BLUTH", "DUNMF", "GRNGT", "KRUST",
    "NAKAT", "MOMCO", "ZORGN", "GEKKO",
];

fn symbol(i: usize) -> String {
    NAMES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("S{i:04}"))
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, no date crate needed).
pub fn iso_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    iso(d.as_secs() as i64, d.subsec_millis())
}

pub fn iso(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let dd = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

struct Feed {
    target: Target,
    base: String,
    host: String,
    syms: Vec<String>,
    mids: Vec<f64>,
    rng: Rng,
}

impl Feed {
    fn quote_path(&self, i: usize) -> String {
        match self.target {
            Target::Halley => format!("{}/quotes/{}", self.base, self.syms[i]),
            Target::Nchan => format!("/pub/quotes-{}", self.syms[i]),
        }
    }

    fn tape_path(&self) -> String {
        match self.target {
            Target::Halley => format!("{}/tape", self.base),
            Target::Nchan => "/pub/tape".into(),
        }
    }

    fn quote_json(&self, i: usize, ts: &str) -> String {
        let mid = self.mids[i];
        let half = (mid * 0.0004).max(0.01);
        format!(
            r#"{{"sym":"{}","bid":{:.2},"ask":{:.2},"ts":"{ts}"}}"#,
            self.syms[i],
            mid - half,
            mid + half
        )
    }

    /// One random-walk step for symbol `i`; maybe a trade.
    fn step(&mut self, i: usize, trade_ratio: f64, ts: &str) -> (String, Option<String>) {
        let shock = (self.rng.f64() - 0.5) * 0.002;
        self.mids[i] = (self.mids[i] * (1.0 + shock)).max(0.05);
        let q = self.quote_json(i, ts);
        let t = (self.rng.f64() < trade_ratio).then(|| {
            let side = if self.rng.below(2) == 0 {
                "buy"
            } else {
                "sell"
            };
            let qty = (1 + self.rng.below(50)) * 100;
            format!(
                r#"{{"sym":"{}","px":{:.2},"qty":{qty},"side":"{side}","ts":"{ts}"}}"#,
                self.syms[i], self.mids[i]
            )
        });
        (q, t)
    }
}

pub async fn run(args: TickerArgs) -> Result<i32> {
    let c = &args.common;
    if c.procs > 1 {
        bail!("ticker runs in one process (--procs 1)");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be positive");
    }
    if !(0.0..=1.0).contains(&args.trade_ratio) {
        bail!("--trade-ratio must be within 0..1");
    }
    if args.tick < Duration::from_millis(1) {
        bail!("--tick must be at least 1ms");
    }
    if args.batch && c.target == Target::Nchan {
        bail!("--batch is for halley (Nchan has no batch endpoint)");
    }
    let mut rng = Rng::seeded();
    let n = args.symbols as usize;
    let mut feed = Feed {
        target: c.target,
        base: args.base.trim_end_matches('/').to_string(),
        host: c.addr.to_string(),
        syms: (0..n).map(symbol).collect(),
        mids: (0..n).map(|_| 20.0 + rng.f64() * 480.0).collect(),
        rng,
    };
    let stream = tokio::net::TcpStream::connect(c.addr)
        .await
        .with_context(|| format!("connect to {}", c.addr))?;
    stream.set_nodelay(true)?;
    let mut conn = Conn::new(stream, 64 * 1024);
    // Initial state: every quote, and an empty tape.
    if c.target == Target::Halley {
        let ts = iso_now();
        let mut req = Vec::new();
        for i in 0..n {
            let q = feed.quote_json(i, &ts);
            write_request(
                &mut req,
                "PUT",
                &feed.quote_path(i),
                &feed.host,
                &[("Content-Type", "application/json")],
                Some(q.as_bytes()),
            );
        }
        write_request(
            &mut req,
            "PUT",
            &feed.tape_path(),
            &feed.host,
            &[("Content-Type", "application/json")],
            Some(b"[]"),
        );
        conn.write_all(&req).await?;
        for _ in 0..=n {
            let r = tokio::time::timeout(Duration::from_secs(10), conn.read_response(false))
                .await
                .context("setup timed out")??;
            if !(200..300).contains(&r.head.status) {
                bail!(
                    "setup PUT answered {}: {}",
                    r.head.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
    }
    eprintln!(
        "halley-load ticker: {} symbols, {} updates/s, trades {:.0}%, at {} ({}){}; {}",
        n,
        args.rate,
        args.trade_ratio * 100.0,
        c.addr,
        c.target.name(),
        if args.batch {
            ", one /batch per tick"
        } else {
            ""
        },
        if args.duration.is_zero() {
            "until Ctrl-C".to_string()
        } else {
            format!("for {:?}", args.duration)
        }
    );
    let start = Instant::now();
    let end = (!args.duration.is_zero()).then(|| start + args.duration);
    let mut tick = tokio::time::interval(args.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut owed = 0.0f64;
    let (mut quotes, mut trades, mut errors, mut requests) = (0u64, 0u64, 0u64, 0u64);
    let (mut last_q, mut last_t) = (0u64, 0u64);
    let mut hist = new_hist();
    let mut iv = new_hist();
    let mut next_print = start + Duration::from_secs(1);
    let mut req = Vec::new();
    let mut first_error: Option<String> = None;
    // Bounded by --duration, or by Ctrl-C when --duration is 0.
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        owed += args.rate * args.tick.as_secs_f64();
        let k = owed.floor() as usize;
        owed -= k as f64;
        if k > 0 {
            let ts = iso_now();
            req.clear();
            let mut expect = 0usize;
            let mut batch = String::new();
            let (mut nq, mut nt) = (0u64, 0u64);
            for _ in 0..k {
                let i = feed.rng.below(n as u64) as usize;
                let (q, t) = feed.step(i, args.trade_ratio, &ts);
                let mut subs = vec![("PUT", feed.quote_path(i), q)];
                if let Some(t) = t {
                    let tape = feed.tape_path();
                    subs.push(("POST", tape, t));
                    nt += 1;
                }
                nq += 1;
                for (m, path, body) in subs {
                    if args.batch {
                        let _ = write!(
                            batch,
                            "--{BATCH_BOUNDARY}\r\nContent-Type: application/http; msgtype=request\r\n\r\n{m} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\r\n",
                            body.len()
                        );
                    } else {
                        let m = if c.target == Target::Nchan { "POST" } else { m };
                        write_request(
                            &mut req,
                            m,
                            &path,
                            &feed.host,
                            &[("Content-Type", "application/json")],
                            Some(body.as_bytes()),
                        );
                        expect += 1;
                    }
                }
            }
            if args.batch {
                let _ = write!(batch, "--{BATCH_BOUNDARY}--\r\n");
                let ct = format!("multipart/digest; boundary={BATCH_BOUNDARY}");
                write_request(
                    &mut req,
                    "POST",
                    "/batch",
                    &feed.host,
                    &[("Content-Type", &ct)],
                    Some(batch.as_bytes()),
                );
                expect = 1;
            }
            let t0 = clock::mono_ns();
            conn.write_all(&req).await?;
            requests += expect as u64;
            for _ in 0..expect {
                let r = tokio::time::timeout(Duration::from_secs(5), conn.read_response(false))
                    .await
                    .context("the server did not answer within 5s")??;
                if !(200..300).contains(&r.head.status) {
                    errors += 1;
                    first_error.get_or_insert_with(|| {
                        format!(
                            "{}: {}",
                            r.head.status,
                            String::from_utf8_lossy(&r.body).trim()
                        )
                    });
                }
                if r.head.close {
                    bail!("the server closed the connection");
                }
            }
            record_ns(&mut hist, clock::mono_ns() - t0);
            record_ns(&mut iv, clock::mono_ns() - t0);
            quotes += nq;
            trades += nt;
        }
        if Instant::now() >= next_print {
            let p = Percentiles::of(&iv);
            iv.reset();
            eprintln!(
                "[{:>5.0}s ticker ] {} quotes/s {} trades/s | errors {} | tick write→answered {}",
                start.elapsed().as_secs_f64(),
                quotes - last_q,
                trades - last_t,
                errors,
                p.short()
            );
            last_q = quotes;
            last_t = trades;
            next_print += Duration::from_secs(1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let p = Percentiles::of(&hist);
    let mut rows = vec![
        (
            "target".to_string(),
            format!("{} at {}", c.target.name(), c.addr),
        ),
        ("ran".into(), format!("{secs:.1}s")),
        (
            "quotes".into(),
            format!("{quotes} ({:.0}/s)", quotes as f64 / secs),
        ),
        (
            "trades".into(),
            format!("{trades} ({:.0}/s)", trades as f64 / secs),
        ),
        ("requests".into(), requests.to_string()),
        (
            "errors".into(),
            format!(
                "{errors}{}",
                first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
        ),
    ];
    rows.extend(crate::fleet::latency_rows("tick latency", &p));
    crate::stats::print_table("halley-load ticker", &rows);
    if let Some(path) = &c.json {
        let json = serde_json::json!({
            "scenario": "ticker",
            "target": c.target.name(),
            "argv": std::env::args().collect::<Vec<_>>(),
            "results": {"seconds": secs, "quotes": quotes, "trades": trades, "requests": requests, "errors": errors,
                        "tick_latency_us": p},
        });
        output::write_json(path, &json)?;
    }
    Ok(if errors == 0 { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_198_684_815, 123), "2007-12-26T16:00:15.123Z");
        assert_eq!(iso(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn quotes_are_json() {
        let mut f = Feed {
            target: Target::Halley,
            base: String::new(),
            host: "h".into(),
            syms: vec![symbol(0)],
            mids: vec![100.0],
            rng: Rng::seeded(),
        };
        let (q, t) = f.step(0, 1.0, "2026-01-01T00:00:00.000Z");
        let v: serde_json::Value = serde_json::from_str(&q).unwrap();
        assert_eq!(v["sym"], "ACME");
        assert!(v["bid"].as_f64().unwrap() < v["ask"].as_f64().unwrap());
        let t: serde_json::Value = serde_json::from_str(&t.unwrap()).unwrap();
        assert!(t["qty"].as_u64().unwrap() >= 100);
        assert_eq!(f.quote_path(0), "/quotes/ACME");
    }
}
