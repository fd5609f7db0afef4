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

    /// Queues the verdict on the next request; false when the queue is
    /// full (see [`MAX_QUEUED_VERDICTS`]).
    fn push(&self, framing: Framing) -> bool {
        let Ok(mut q) = self.0.lock() else {
            return false;
        };
        if q.len() >= MAX_QUEUED_VERDICTS {
            return false;
        }
        q.push_back(framing);
        true
    }
}

/// Most verdicts held for requests the server has not served yet. A
/// client pipelining more than this is not followed further: the rest of
/// its requests are `Unknown` (a verdict dropped would shift every later
/// one onto the wrong request).
const MAX_QUEUED_VERDICTS: usize = 1024;
/// Most header lines in one head (hyper's own default).
const MAX_HEADERS: usize = 100;

/// Where the follower is in the request stream. The chunked states mirror
/// hyper's own chunked decoder byte for byte (`proto/h1/decode.rs`), so
/// the two agree on where a chunked body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

#[derive(Debug)]
enum State {
    /// Reading a head; what has arrived of it so far.
    Head(Vec<u8>),
    /// A body of a known length; what is left of it.
    Body(u64),
    /// A chunked body: the decoder state, the current chunk's size (or
    /// what is left of it in `Body`), and the trailer bytes so far.
    Chunked(Chunked, u64, usize),
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
                    let held = buf.len();
                    buf.extend_from_slice(bytes);
                    // A head only ends at a newline: parse only then.
                    if !bytes.contains(&b'\n') {
                        if buf.len() > MAX_HEAD_BYTES {
                            self.state = State::Lost;
                        }
                        return;
                    }
                    match parse_head(buf) {
                        Head::Partial if buf.len() > MAX_HEAD_BYTES => {
                            self.state = State::Lost;
                            return;
                        }
                        Head::Partial => return,
                        Head::Invalid => {
                            self.state = State::Lost;
                            return;
                        }
                        Head::Complete { len, framing, body } => {
                            // The head ends in what just arrived (it ends
                            // at a newline, and every earlier one was
                            // parsed).
                            let Some(rest) = len.checked_sub(held) else {
                                self.state = State::Lost;
                                return;
                            };
                            bytes = &bytes[rest..];
                            self.state = match self.verdicts.push(framing) {
                                true => body,
                                false => State::Lost,
                            };
                        }
                    }
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
                State::Chunked(Chunked::Body, left, _) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::Chunked(Chunked::BodyCr, 0, 0);
                    }
                }
                State::Chunked(..) => {
                    self.state =
                        chunked_step(std::mem::replace(&mut self.state, State::Lost), bytes[0]);
                    bytes = &bytes[1..];
                }
            }
        }
    }
}

/// One byte of a chunked body outside chunk data: hyper's `ChunkedState`
/// transitions, with its limits (a chunk size that overflows, a trailer
/// section over [`MAX_HEAD_BYTES`]) ending in `Lost`.
fn chunked_step(state: State, byte: u8) -> State {
    use Chunked::*;
    let State::Chunked(at, size, trailer) = state else {
        return State::Lost;
    };
    let digit = |size: u64| {
        let d = (byte as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(d))
    };
    let next = |at, size| State::Chunked(at, size, trailer);
    let trailing = |at| match trailer + 1 {
        n if n > MAX_HEAD_BYTES => State::Lost,
        n => State::Chunked(at, 0, n),
    };
    match (at, byte) {
        (Start, _) => digit(size).map_or(State::Lost, |s| next(Size, s)),
        (Size, b'\t' | b' ') | (SizeLws, b'\t' | b' ') => next(SizeLws, size),
        (Size | SizeLws, b';') | (Extension, _) if byte != b'\r' && byte != b'\n' => {
            next(Extension, size)
        }
        (Size | SizeLws | Extension, b'\r') => next(SizeLf, size),
        (Size, _) => digit(size).map_or(State::Lost, |s| next(Size, s)),
        (SizeLf, b'\n') if size == 0 => next(EndCr, 0),
        (SizeLf, b'\n') => next(Body, size),
        (BodyCr, b'\r') => next(BodyLf, 0),
        (BodyLf, b'\n') => next(Start, 0),
        (Trailer, b'\r') => trailing(TrailerLf),
        (Trailer, _) => trailing(Trailer),
        (TrailerLf, b'\n') => trailing(EndCr),
        (EndCr, b'\r') => trailing(EndLf),
        (EndCr, _) => trailing(Trailer),
        (EndLf, b'\n') => State::Head(Vec::new()),
        _ => State::Lost,
    }
}

/// What [`parse_head`] made of the bytes so far.
enum Head {
    Partial,
    Invalid,
    Complete {
        /// Bytes the head took (leading blank lines included).
        len: usize,
        framing: Framing,
        /// How its body is framed.
        body: State,
    },
}

/// Parses a head with the parser hyper uses (`httparse`, same defaults),
/// so the two agree on where it ends — leading blank lines, bare-LF line
/// endings and all — and reads its framing headers as hyper does.
fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    };
    let (mut length, mut chunked, mut has_cl, mut has_te) = (None, false, false, false);
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
            if has_te {
                continue; // hyper ignores it after Transfer-Encoding
            }
            // Digits only, and every copy the same, as hyper requires.
            let parsed = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten();
            match (parsed, length) {
                (None, _) => return Head::Invalid,
                (Some(n), Some(l)) if n != l => return Head::Invalid,
                (Some(n), _) => length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let framing = if has_cl && has_te {
        Framing::Ambiguous
    } else {
        Framing::Sound
    };
    let body = match (has_te, chunked, length) {
        (true, true, _) => State::Chunked(Chunked::Start, 0, 0),
        // hyper refuses a non-chunked Transfer-Encoding; an upgrade or
        // CONNECT leaves HTTP altogether. Neither is followed further.
        (true, false, _) => State::Lost,
        _ if req.method == Some("CONNECT") => State::Lost,
        (false, _, None | Some(0)) => State::Head(Vec::new()),
        (false, _, Some(n)) => State::Body(n),
    };
    Head::Complete { len, framing, body }
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
