//! A workload connection whose every read says who wrote the bytes: the
//! listening socket has `SO_PASSCRED`, so the kernel stamps each write with
//! the writing process's credentials (`SCM_CREDENTIALS`), and reads never
//! merge bytes from different writers.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

use crate::attest::Writers;

/// Has the kernel stamp writes to `socket` (a listener passes it on to the
/// connections it accepts, including those queued before the accept).
pub fn pass_credentials(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, nix::sys::socket::sockopt::PassCred, &true).map_err(io::Error::from)
}

/// A workload connection that notes every writer in [`Writers`].
pub struct StampedStream {
    inner: UnixStream,
    connecting: i32,
    writers: Writers,
    control: Vec<u8>,
}

impl StampedStream {
    /// Wraps the connection of process `connecting`.
    pub fn new(inner: UnixStream, connecting: i32, writers: Writers) -> Self {
        Self {
            inner,
            connecting,
            writers,
            control: nix::cmsg_space!(UnixCredentials),
        }
    }
}

/// One `recvmsg`: the bytes read and their writer's pid, if stamped.
fn receive(fd: i32, buf: &mut [u8], control: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let writer = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
            _ => None,
        })
    });
    Ok((msg.bytes, writer))
}

impl AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            let control = &mut this.control;
            match this
                .inner
                .try_io(Interest::READABLE, || receive(fd, unfilled, control))
            {
                Ok((n, writer)) => {
                    if n > 0 {
                        this.writers.note(this.connecting, writer);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use tokio::io::AsyncReadExt;

    /// Both writes land before the accept: each still carries its writer,
    /// and a read never returns the two writers' bytes together.
    #[tokio::test]
    async fn every_read_names_its_writer_even_before_the_accept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        pass_credentials(&listener).unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        client.write_all(b"mine").unwrap();
        // A child process writes on the same connection (its stdout).
        let lent = OwnedFd::from(client.try_clone().unwrap());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "printf theirs"])
            .stdout(std::process::Stdio::from(lent))
            .spawn()
            .unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        drop(client);

        let (stream, _) = listener.accept().await.unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let writers = Writers::default();
        let mut stamped = StampedStream::new(stream, me, writers.clone());
        let mut buf = [0u8; 64];
        let n = stamped.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"mine", "not merged with the child's bytes");
        assert_eq!(writers.foreign(), None);
        let mut rest = Vec::new();
        stamped.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"theirs");
        assert_eq!(writers.foreign(), Some(child_pid));
    }
}
