//! The peer of a workload connection: what the kernel said at accept
//! (`SO_PEERCRED`, `SO_PEERPIDFD`), who has written its bytes since
//! (`SCM_CREDENTIALS`), and the part of its last attestation that holds
//! while the kernel pins its process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use super::{AttestError, FileVersion, exe_version, stat};

/// Who wrote a connection's bytes, as the kernel stamps them
/// (`SCM_CREDENTIALS` on a socket with `SO_PASSCRED`). `SO_PEERCRED` names
/// the process that connected, not the one writing: a process that
/// connects, forks a child keeping the socket and then execs a trusted
/// binary would otherwise lend that binary's identity to the child, as
/// would one passing the socket to another process. Once any byte comes
/// from another process (or without credentials), the connection is
/// refused for good.
#[derive(Clone, Debug, Default)]
pub struct Writers(Arc<AtomicI32>);

impl Writers {
    /// Notes that bytes written by `writer` (its pid, `None` without
    /// credentials) arrived on the connection of process `connecting`.
    pub fn note(&self, connecting: i32, writer: Option<i32>) {
        if writer != Some(connecting) {
            let _ = self.0.compare_exchange(
                0,
                writer.filter(|p| *p > 0).unwrap_or(-1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// The first writer other than the connecting process (-1: unknown).
    pub fn foreign(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }
}

impl PartialEq for Writers {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Writers {}

/// The peer of a workload connection, as the kernel reported it at connect
/// time, with the process start time and executable read at accept, and who
/// has written on the connection since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// Effective uid at connect.
    pub uid: u32,
    /// Effective gid at connect.
    pub gid: u32,
    /// Start time (clock ticks since boot, `/proc/PID/stat` field 22).
    pub start_time: u64,
    /// The executable the process ran when its connection was accepted.
    pub exe: FileVersion,
    /// Who wrote the connection's bytes.
    pub writers: Writers,
    /// The connecting process's pidfd and what its connection's last
    /// attestation found.
    pub pinned: Pinned,
}

/// The connecting process as the kernel names it (`SO_PEERPIDFD`), kept for
/// the connection's life, and the part of its last attestation that holds
/// while that process lives and runs the same file.
#[derive(Clone, Debug, Default)]
pub struct Pinned(Arc<PinnedInner>);

#[derive(Debug, Default)]
struct PinnedInner {
    pidfd: Option<std::os::fd::OwnedFd>,
    last: Mutex<Option<Executable>>,
    /// `/proc/PID/cgroup`, opened once while the pidfd said the process
    /// lived: a `/proc/PID` file names the process it was opened for (its
    /// `struct pid`), never a later holder of the number, and is read
    /// afresh from offset 0 on each call (the kernel renders it per read).
    cgroup: Mutex<Option<std::fs::File>>,
}

/// The executable an attestation found: the file's version (content
/// included) when it was hashed, its path and hash.
#[derive(Clone, Debug)]
pub(super) struct Executable {
    pub(super) version: FileVersion,
    pub(super) path: PathBuf,
    pub(super) sha256: String,
}

impl Pinned {
    fn new(pidfd: Option<std::os::fd::OwnedFd>) -> Self {
        Self(Arc::new(PinnedInner {
            pidfd,
            last: Mutex::new(None),
            cgroup: Mutex::new(None),
        }))
    }

    /// Whether the pidfd's process has exited (`None`: no pidfd). A process
    /// that has not exited still holds its pid: no other process can.
    pub(super) fn exited(&self) -> Option<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let fd = self.0.pidfd.as_ref()?;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // An error is taken as exited: refused, never trusted.
        Some(poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0))
    }

    pub(super) fn last(&self) -> Option<Executable> {
        self.0.last.lock().ok()?.clone()
    }

    /// The text of the process's `/proc/PID/cgroup` now, through the file
    /// this connection opened (opened on the first call). The caller checks
    /// that the process still lives afterwards ([`Self::exited`]): then the
    /// file was opened for it, and the text is its own. Empty when it
    /// cannot be read.
    pub(super) fn cgroup_text(&self, pid: i32) -> String {
        use std::os::unix::fs::FileExt;
        let Ok(mut file) = self.0.cgroup.lock() else {
            return String::new();
        };
        if file.is_none() {
            *file = std::fs::File::open(format!("/proc/{pid}/cgroup")).ok();
        }
        let Some(f) = file.as_ref() else {
            return String::new();
        };
        // The kernel renders the whole file on a read from offset 0; a
        // cgroup path is at most 4 KiB and the selectors take 32 lines.
        let mut buf = vec![0u8; 16 * 1024];
        let mut len = 0;
        while len < buf.len() {
            match f.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(_) => return String::new(),
            }
        }
        // A last line cut off by the buffer would read as a prefix of a
        // real path (an ancestor's cgroup): only whole lines are read.
        let whole = buf[..len]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        buf.truncate(whole);
        String::from_utf8(buf).unwrap_or_default()
    }

    pub(super) fn remember(&self, exe: Option<Executable>) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = exe;
        }
    }
}

impl PartialEq for Pinned {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Pinned {}

impl Peer {
    /// This peer without its pidfd (and so without reuse of an earlier
    /// attestation): for what outlives the connection, such as a
    /// container-credentials token.
    pub fn unpinned(&self) -> Self {
        Self {
            pinned: Pinned::default(),
            ..self.clone()
        }
    }

    /// The peer `pid` (uid, gid from `SO_PEERCRED`) with its start time and
    /// executable read now, at accept.
    ///
    /// The executable is pinned because a process's writes all carry its
    /// pid, before an exec and after: one that writes requests and then
    /// execs a trusted binary (a child or the next process holding the
    /// socket reading the answers) would otherwise have them attested as
    /// that binary. A process that exec'd since its connection was accepted
    /// is refused and opens a new connection, where it is attested as its
    /// new binary.
    ///
    /// `pidfd` (`SO_PEERPIDFD`, Linux 6.5 and later) names the process that
    /// connected, not whatever holds its pid now: it must still name `pid`
    /// before and after the reads, so a connecting process that exited
    /// before accept, its pid reused by another, is refused rather than
    /// attested as the newcomer.
    pub fn at_accept(
        pid: i32,
        uid: u32,
        gid: u32,
        writers: Writers,
        pidfd: Option<std::os::fd::OwnedFd>,
    ) -> Result<Self, AttestError> {
        let same_process = || pidfd.as_ref().is_none_or(|fd| pidfd_pid(fd) == Some(pid));
        if !same_process() {
            return Err(AttestError::PeerGone(pid));
        }
        let start_time = stat(pid)?.start_time;
        let exe = exe_version(pid)?;
        if !same_process() {
            return Err(AttestError::PeerGone(pid));
        }
        Ok(Self {
            pid,
            uid,
            gid,
            start_time,
            exe,
            writers,
            pinned: Pinned::new(pidfd),
        })
    }
}

/// The pid a pidfd names now, `None` once its process is gone (reaped: the
/// kernel's fdinfo says `Pid: -1`) or the fdinfo cannot be read.
pub fn pidfd_pid(fd: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}
