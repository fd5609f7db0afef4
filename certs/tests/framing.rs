//! The framing guard against hyper itself: every request hyper serves
//! gets the verdict on its own head, whatever the stream looks like
//! (leading blank lines, bare-LF line endings, chunk extensions,
//! trailers, pipelining, more requests than the guard follows).
//!
//! Each request says what its verdict should be in `X-Expect`; the
//! server answers `ok` or `MISMATCH` per request served.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mintguard_certs::framing::{Framing, FramingGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `stream` with hyper behind the guard; the answers, in order.
async fn serve(stream: Vec<u8>) -> Vec<String> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (io, verdicts) = FramingGuard::new(server);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let framing = verdicts.next();
        async move {
            let expect = req
                .headers()
                .get("x-expect")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let path = req.uri().path().to_owned();
            // Read the body, as a handler does, so hyper goes on.
            let _ = req.into_body().collect().await;
            let seen = match framing {
                Framing::Sound => "sound",
                Framing::Ambiguous => "ambiguous",
                Framing::Unknown => "unknown",
            };
            // Unknown is refused by servers, so it is never a hole.
            let verdict = if seen == expect || seen == "unknown" {
                "ok"
            } else {
                "MISMATCH"
            };
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!(
                "[{verdict} {path} {seen}]"
            )))))
        }
    });
    let server = tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    });
    // The client keeps its side open (hyper stops serving at a read EOF)
    // and reads until the server has been quiet for a while.
    let (mut read, mut write) = tokio::io::split(client);
    let _ = write.write_all(&stream).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), read.read(&mut buf)).await
    {
        out.extend_from_slice(&buf[..n]);
    }
    drop(write);
    server.abort();
    let text = String::from_utf8_lossy(&out);
    text.split('[')
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .map(str::to_owned)
        .collect()
}

fn sound(path: &str, eol: &str) -> String {
    format!("GET {path} HTTP/1.1{eol}Host: x{eol}X-Expect: sound{eol}{eol}")
}

fn smuggle(path: &str, eol: &str) -> String {
    format!(
        "POST {path} HTTP/1.1{eol}Host: x{eol}X-Expect: ambiguous{eol}Content-Length: 3{eol}\
         Transfer-Encoding: chunked{eol}{eol}3\r\nabc\r\n0\r\n\r\n"
    )
}

fn assert_all_ok(answers: &[String], served_at_least: usize, case: &str) {
    assert!(
        answers.len() >= served_at_least,
        "{case}: served {answers:?}"
    );
    for a in answers {
        assert!(a.starts_with("ok "), "{case}: {answers:?}");
    }
}

#[tokio::test]
async fn every_served_request_gets_its_own_verdict() {
    let chunked_with_trailer = |path: &str, trailer_end: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-Expect: sound\r\nTransfer-Encoding: chunked\r\n\r\n\
             4;name=value\r\nabcd\r\n0\r\nX-Trailer: 1{trailer_end}"
        )
    };
    let cases: Vec<(&str, String, usize)> = vec![
        (
            "blank lines before a request",
            format!("\r\n\r\n\n{}{}", sound("/a", "\r\n"), smuggle("/b", "\r\n")),
            2,
        ),
        (
            "bare LF line endings",
            format!("{}{}", sound("/a", "\n"), smuggle("/b", "\n")),
            2,
        ),
        (
            "chunk extension and trailers",
            format!(
                "{}{}",
                chunked_with_trailer("/a", "\r\n\r\n"),
                smuggle("/b", "\r\n")
            ),
            2,
        ),
        (
            "a trailer line ending in a bare LF",
            format!(
                "{}{}{}",
                chunked_with_trailer("/a", "\n\r\n"),
                sound("/b", "\r\n"),
                smuggle("/c", "\r\n")
            ),
            1,
        ),
        (
            "a smuggled head inside a body",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nX-Expect: sound\r\nContent-Length: {}\r\n\r\n{}{}",
                smuggle("/hidden", "\r\n").len(),
                smuggle("/hidden", "\r\n"),
                smuggle("/b", "\r\n")
            ),
            2,
        ),
    ];
    for (case, stream, served) in cases {
        let answers = serve(stream.into_bytes()).await;
        assert_all_ok(&answers, served, case);
    }
}

#[tokio::test]
async fn pipelining_past_the_verdict_queue_is_refused_not_shifted() {
    let mut stream = String::new();
    for i in 0..1500 {
        stream.push_str(&sound(&format!("/{i}"), "\r\n"));
    }
    stream.push_str(&smuggle("/last", "\r\n"));
    let answers = serve(stream.into_bytes()).await;
    assert_all_ok(&answers, 1500, "1500 pipelined");
    let last = answers.last().expect("answers");
    assert!(last.starts_with("ok /last "), "{last}");
    assert!(!last.ends_with("sound"), "{last}");
}
