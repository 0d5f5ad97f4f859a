//! The metrics/admin HTTP endpoint (`GET /metrics`, `GET|PUT|POST /limits`), in-process:
//! the input is what a client sends on one connection, delivered in chunks the input chooses.
//!
//! The endpoint is hyper's http1 server (`accounting::server::serve_connection`, the same
//! call the listener makes). Checks: a connection gets at most one response, well formed
//! (status line, 200 or a 4xx or hyper's 505, `Content-Length` equal to what follows); none
//! only when the input ended inside a request; only an answered 200 changes the limits and
//! its body is what `GET /limits` reports afterwards; the metrics text stays renderable.
#![no_main]

use std::sync::Arc;

use fuzz_harness::Cursor;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use virtiofsd_kr::accounting::server::serve_connection;
use virtiofsd_kr::accounting::Accounting;

/// Sends `chunks` on one connection and returns the raw response.
fn exchange(rt: &tokio::runtime::Runtime, acct: &Arc<Accounting>, chunks: &[&[u8]]) -> Vec<u8> {
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let send = async {
            for chunk in chunks {
                if client.write_all(chunk).await.is_err() {
                    break;
                }
            }
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let (_, out) = tokio::join!(serve_connection(server, acct), send);
        out
    })
}

/// Splits a response into status code and body, checking its framing: one response, its
/// `Content-Length` equal to what follows the head. `None`: the server closed without one
/// (the connection ended inside a request).
fn parse(response: &[u8]) -> Option<(u16, String)> {
    if response.is_empty() {
        return None;
    }
    let text = std::str::from_utf8(response).expect("response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("response has a header end");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    assert!(
        status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
        "{status_line:?}"
    );
    let code: u16 = status_line[9..12].parse().expect("status code");
    // 200, a client error, or hyper's 505 for a version it does not speak; never another 5xx.
    assert!(
        code == 200 || (400..500).contains(&code) || code == 505,
        "status {code}"
    );
    let length: usize = lines
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim())
        })
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(
        length,
        body.len(),
        "Content-Length differs from what follows (one response)"
    );
    Some((code, body.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let acct = fuzz_harness::test_accounting();
    let mut c = Cursor::new(data);
    let pieces = 1 + c.u8() % 4;
    let mut chunks = Vec::new();
    for i in 0..pieces {
        if i + 1 == pieces {
            chunks.push(c.rest());
        } else {
            let n = c.u16() as usize;
            chunks.push(c.bytes(n));
        }
    }
    let before = acct.limiter.limits();
    let answer = parse(&exchange(&rt, &acct, &chunks));
    let after = acct.limiter.limits();
    match answer {
        // Only an answered 200 changes the limits, and it reports what it set.
        Some((200, body)) if before != after => {
            assert_eq!(body, format!("{after}\n"), "200 body is not the new limits")
        }
        Some((code, _)) if before != after => panic!("limits changed by a request answered {code}"),
        None => assert_eq!(before, after, "limits changed without an answer"),
        Some(_) => {}
    }
    // What GET /limits and GET /metrics report now is consistent with the limiter.
    let (code, body) =
        parse(&exchange(&rt, &acct, &[b"GET /limits HTTP/1.1\r\n\r\n"])).expect("answered");
    assert_eq!(code, 200);
    assert_eq!(body, format!("{after}\n"));
    let (code, body) =
        parse(&exchange(&rt, &acct, &[b"GET /metrics HTTP/1.1\r\n\r\n"])).expect("answered");
    assert_eq!(code, 200);
    assert!(body.ends_with('\n'));
    // The limiter takes the new limits without panicking on a charge.
    acct.limiter.charge(u64::from(c.u32()));
    let _ = acct.limiter.is_active();
});
