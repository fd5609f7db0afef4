//! A guard for HTTP/1.1 request framing, under every Mintguard listener.
//!
//! A request that carries both `Content-Length` and `Transfer-Encoding` is
//! framed twice; a proxy in front and the server behind it may disagree on
//! where it ends (request smuggling). RFC 9112 §6.3 lets a server reject it
//! or decode it by `Transfer-Encoding`; hyper does the latter and drops the
//! `Content-Length` header before a handler could see it. Mintguard
//! rejects it: [`FramingGuard`] wraps a connection and follows the request
//! stream as the server reads it — each head, then its body by its length
//! or its chunks — and notes, per request in order, whether its head was
//! framed twice. The server takes one [`Framing`] verdict per request it
//! serves ([`FramingVerdicts::next`]) and refuses the twice-framed ones.
//!
//! The guard only reads what the server reads; it never changes a byte.
//! Input it cannot follow (a head over [`MAX_HEAD_BYTES`], a malformed
//! chunk) stops it; every request after that point is `Unknown`, which
//! servers refuse too (the server itself will have failed on such input).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head followed (hyper's own limit is lower).
pub const MAX_HEAD_BYTES: usize = 128 * 1024;
/// Longest chunk-size or trailer line followed.
const MAX_LINE_BYTES: usize = 4096;

/// What the guard saw of one request's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Framed once (or not at all).
    Sound,
    /// Both `Content-Length` and `Transfer-Encoding`.
    Ambiguous,
    /// The guard could not follow the stream this far.
    Unknown,
}

/// The verdicts of one connection, in request order.
#[derive(Clone, Debug, Default)]
pub struct FramingVerdicts(Arc<Mutex<VecDeque<Framing>>>);

impl FramingVerdicts {
    /// The verdict on the next request the server serves.
    pub fn next(&self) -> Framing {
        self.0
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or(Framing::Unknown)
    }

    fn push(&self, framing: Framing) {
        if let Ok(mut q) = self.0.lock() {
            // Bounded: a server serves requests one at a time, so more
            // than a few queued heads means it is not reading verdicts.
            if q.len() < 1024 {
                q.push_back(framing);
            }
        }
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    Lost,
}

/// Follows a request stream's framing (see the module).
#[derive(Debug)]
struct Follower {
    state: State,
    verdicts: FramingVerdicts,
}

impl Follower {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Head(buf) => {
                    let Some((line_end, rest)) = take_until_blank_line(buf, bytes) else {
                        buf.extend_from_slice(bytes);
                        if buf.len() > MAX_HEAD_BYTES {
                            self.state = State::Lost;
                        }
                        return;
                    };
                    buf.extend_from_slice(line_end);
                    bytes = rest;
                    let head = std::mem::take(buf);
                    self.state = self.after_head(&head);
                }
                State::Body(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match take_line(line, bytes) {
                    None => return,
                    Some(rest) => {
                        bytes = rest;
                        let text = String::from_utf8_lossy(line);
                        let size = text.trim_end().split(';').next().unwrap_or("").trim();
                        self.state = match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            Ok(n) => State::ChunkData(n),
                            Err(_) => State::Lost,
                        };
                    }
                },
                State::ChunkData(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::ChunkEnd(0);
                    }
                }
                State::ChunkEnd(seen) => {
                    let expected = b"\r\n"[usize::from(*seen)];
                    if bytes[0] != expected {
                        self.state = State::Lost;
                        return;
                    }
                    bytes = &bytes[1..];
                    *seen += 1;
                    if *seen == 2 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match take_line(line, bytes) {
                    None => return,
                    Some(rest) => {
                        bytes = rest;
                        self.state = if line.as_slice() == b"\r\n" {
                            State::Head(Vec::new())
                        } else {
                            State::Trailers(Vec::new())
                        };
                    }
                },
            }
            if let State::ChunkSize(l) | State::Trailers(l) = &self.state
                && l.len() > MAX_LINE_BYTES
            {
                self.state = State::Lost;
            }
        }
    }

    /// Records the verdict on `head` and says how its body is framed.
    fn after_head(&mut self, head: &[u8]) -> State {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n").skip_while(|l| l.is_empty());
        let _request_line = lines.next();
        let (mut length, mut chunked, mut has_cl, mut has_te) = (None, false, false, false);
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                length = value.parse::<u64>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                has_te = true;
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        self.verdicts.push(if has_cl && has_te {
            Framing::Ambiguous
        } else {
            Framing::Sound
        });
        match (has_te, chunked, has_cl, length) {
            (true, true, _, _) => State::ChunkSize(Vec::new()),
            // The server refuses a non-chunked Transfer-Encoding, and an
            // unreadable Content-Length.
            (true, false, _, _) | (false, _, true, None) => State::Lost,
            (false, _, false, _) | (false, _, true, Some(0)) => State::Head(Vec::new()),
            (false, _, true, Some(n)) => State::Body(n),
        }
    }
}

/// Splits `bytes` after the end of a head (`\r\n\r\n`, which may straddle
/// what `buf` already holds): the part that ends the head, and the rest.
fn take_until_blank_line<'a>(buf: &[u8], bytes: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    // Look across the boundary with the last three bytes already held.
    let carry = &buf[buf.len().saturating_sub(3)..];
    let mut window = carry.to_vec();
    window.extend_from_slice(bytes);
    let at = window.windows(4).position(|w| w == b"\r\n\r\n")?;
    let end = at + 4 - carry.len();
    Some(bytes.split_at(end))
}

/// Appends to `line` up to and including the next `\n`; the rest, once the
/// line is complete.
fn take_line<'a>(line: &mut Vec<u8>, bytes: &'a [u8]) -> Option<&'a [u8]> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            Some(&bytes[i + 1..])
        }
        None => {
            line.extend_from_slice(bytes);
            None
        }
    }
}

/// A connection whose request framing is followed as it is read.
pub struct FramingGuard<IO> {
    io: IO,
    follower: Follower,
}

impl<IO> FramingGuard<IO> {
    /// Wraps `io`; the server reads verdicts from the returned handle.
    pub fn new(io: IO) -> (Self, FramingVerdicts) {
        let verdicts = FramingVerdicts::default();
        let guard = Self {
            io,
            follower: Follower {
                state: State::Head(Vec::new()),
                verdicts: verdicts.clone(),
            },
        };
        (guard, verdicts)
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            // Read in place: no copy of what the server reads.
            this.follower.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<Framing> {
        let mut follower = Follower {
            state: State::Head(Vec::new()),
            verdicts: FramingVerdicts::default(),
        };
        // Fed in pieces of `split` bytes, as reads may arrive.
        for piece in stream.chunks(split.max(1)) {
            follower.feed(piece);
        }
        let q = follower.verdicts.0.lock().unwrap();
        q.iter().copied().collect()
    }

    #[test]
    fn follows_lengths_and_chunks_across_pipelined_requests() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nworld\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
POST /d HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for split in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                verdicts(stream, split),
                vec![
                    Framing::Sound,
                    Framing::Sound,
                    Framing::Sound,
                    Framing::Ambiguous
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn input_it_cannot_follow_stops_it() {
        let bad_chunk = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(verdicts(bad_chunk, 4096), vec![Framing::Sound]);
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert!(verdicts(&huge, 4096).is_empty());
        assert_eq!(FramingVerdicts::default().next(), Framing::Unknown);
    }
}
