//! Workload attestation from the kernel, never from the request: the
//! socket's `SO_PEERCRED` (pid, uid, gid) and `/proc/PID` (executable, its
//! SHA-256, cgroups), re-read on every request and guarded against pid reuse
//! by comparing the process start time taken at connect (before the reads)
//! with the pid's after them, and against identity lending by checking that
//! the connecting process wrote every byte the connection carried
//! (`SCM_CREDENTIALS`, see [`Writers`]) and runs the executable it ran at
//! accept.
//!
//! Where the kernel names the connecting process itself (`SO_PEERPIDFD`),
//! a connection's later calls reuse what cannot have changed while that
//! process lives and runs the same, unmodified file: its executable's path
//! and hash (see [`Attestor::attest`]). Everything else is read again.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

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
}

/// The executable an attestation found: the file's version (content
/// included) when it was hashed, its path and hash.
#[derive(Clone, Debug)]
struct Executable {
    version: FileVersion,
    path: PathBuf,
    sha256: String,
}

impl Pinned {
    fn new(pidfd: Option<std::os::fd::OwnedFd>) -> Self {
        Self(Arc::new(PinnedInner {
            pidfd,
            last: Mutex::new(None),
        }))
    }

    /// Whether the pidfd's process has exited (`None`: no pidfd). A process
    /// that has not exited still holds its pid: no other process can.
    fn exited(&self) -> Option<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let fd = self.0.pidfd.as_ref()?;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // An error is taken as exited: refused, never trusted.
        Some(poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0))
    }

    fn last(&self) -> Option<Executable> {
        self.0.last.lock().ok()?.clone()
    }

    fn remember(&self, exe: Option<Executable>) {
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
        let link = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&link).map_err(|e| exe_error(pid, &link, e))?;
        if !same_process() {
            return Err(AttestError::PeerGone(pid));
        }
        Ok(Self {
            pid,
            uid,
            gid,
            start_time,
            exe: FileVersion::of(&meta),
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

/// Why a workload could not be attested (401 with the reason).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    /// The connecting process exited, or its pid now names another process.
    #[error("the connecting process {0} is gone (exited, or its pid was reused)")]
    PeerGone(i32),
    /// `/proc` could not be read (the agent needs root or CAP_SYS_PTRACE).
    #[error("cannot read {path}: {reason}")]
    Proc {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The agent's own helper whose parent cannot vouch for it.
    #[error("credential helper refused: {0}")]
    Helper(String),
    /// The process ran another executable by the end of its attestation
    /// (it exec'd meanwhile): nothing read about it is trusted.
    #[error("process {0} changed its executable during attestation")]
    ExecutableChanged(i32),
    /// The process runs another executable than when its connection was
    /// accepted: it exec'd, and what it wrote before may be read as the new
    /// binary's.
    #[error("process {0} runs another executable than when it connected; open a new connection")]
    ExecutedSinceConnect(i32),
    /// Bytes on the connection came from another process than the one that
    /// connected (it forked or passed the socket on).
    #[error(
        "bytes on this connection came from process {writer}, not from {connected}, which connected; each process must connect itself"
    )]
    ConnectionShared {
        /// The connecting process.
        connected: i32,
        /// The other writer (-1: bytes without credentials).
        writer: i32,
    },
    /// The kernel gave no pid (not a local process), or the process was
    /// gone by the time its connection was accepted.
    #[error("the socket peer has no pid, or exited before its connection was accepted")]
    NoPid,
}

/// What `/proc/PID/stat` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Parent pid.
    pub ppid: i32,
    /// Session id.
    pub session: i32,
    /// Start time, clock ticks since boot.
    pub start_time: u64,
    /// A zombie or dead process (state `Z` or `X`): it has exited, only its
    /// entry waits to be reaped.
    pub exited: bool,
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: i32) -> Result<Stat, AttestError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|_| AttestError::PeerGone(pid))?;
    parse_stat(&text).ok_or_else(|| proc_error(&path, "malformed"))
}

/// Parses a `/proc/PID/stat` line. The command name may hold spaces and
/// parentheses: fields are counted after its last `)`. The fields are ASCII,
/// read in one pass (this runs twice per request).
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // After ")": state(3) ppid(4) pgrp(5) session(6) … starttime(22).
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?; // 3
    let ppid = fields.next()?.parse().ok()?; // 4
    let session = fields.nth(1)?.parse().ok()?; // 5, 6
    let start_time = fields.nth(15)?.parse().ok()?; // 7 … 22
    Some(Stat {
        ppid,
        session,
        start_time,
        exited: matches!(state, "Z" | "X" | "x"),
    })
}

fn exe_error(pid: i32, link: &str, e: std::io::Error) -> AttestError {
    match e.kind() {
        std::io::ErrorKind::NotFound => AttestError::PeerGone(pid),
        _ => proc_error(link, e),
    }
}

fn proc_error(path: &str, reason: impl ToString) -> AttestError {
    AttestError::Proc {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The pid of `pid` in its own (innermost) pid namespace: the last field
/// of `/proc/PID/status`'s `NSpid:` line (the pid itself without one).
fn innermost_pid(pid: i32) -> Result<i32, AttestError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|_| AttestError::PeerGone(pid))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|p| p.parse().ok())
        .unwrap_or(pid))
}

/// The real uid of `pid` (`/proc/PID/status`, `Uid:` first field).
fn real_uid(pid: i32) -> Result<u32, AttestError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|_| AttestError::PeerGone(pid))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| proc_error(&path, "no Uid line"))
}

/// Attests workloads; caches executable hashes by device, inode, size and mtime.
pub struct Attestor {
    own_sha256: String,
    hashes: Mutex<HashMap<FileVersion, String>>,
    users: Mutex<Option<(FileVersion, HashMap<u32, String>)>>,
}

/// Most cached executable hashes.
const MAX_CACHED_HASHES: usize = 4096;

impl Attestor {
    /// An attestor that recognizes its own binary (`/proc/self/exe`) as the
    /// credential helper.
    pub fn new() -> Result<Self, AttestError> {
        let me = Self {
            own_sha256: String::new(),
            hashes: Mutex::new(HashMap::new()),
            users: Mutex::new(None),
        };
        let (_, own, _) = me.executable(std::process::id().try_into().unwrap_or(0))?;
        Ok(Self {
            own_sha256: own,
            ..me
        })
    }

    /// The SHA-256 of the agent's own binary.
    pub fn own_sha256(&self) -> &str {
        &self.own_sha256
    }

    /// The executable path and SHA-256 of `pid` (hashed through
    /// `/proc/PID/exe`, so it is the file the process runs even if the path
    /// was replaced or deleted since).
    ///
    /// The file is opened once, and its cache key and its bytes both come
    /// from that open file: a process that execs between the reads cannot
    /// pair one file's key with another file's hash (which would poison the
    /// cache for every later run of the first file). The path is read before
    /// and after the open; if they differ the process exec'd and is refused.
    fn executable(&self, pid: i32) -> Result<(PathBuf, String, FileVersion), AttestError> {
        let link = format!("/proc/{pid}/exe");
        let gone = |e| exe_error(pid, &link, e);
        let path = std::fs::read_link(&link).map_err(gone)?;
        let mut file = std::fs::File::open(&link).map_err(gone)?;
        let meta = file.metadata().map_err(|e| proc_error(&link, e))?;
        if std::fs::read_link(&link).map_err(gone)? != path {
            return Err(AttestError::ExecutableChanged(pid));
        }
        let key = FileVersion::of(&meta);
        if let Some(hash) = self.hashes.lock().ok().and_then(|h| h.get(&key).cloned()) {
            return Ok((path, hash, key));
        }
        let hash = off_the_runtime(|| {
            // aws-lc's SHA-256: fast in every build profile, on multi-MB binaries.
            let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(|e| proc_error(&link, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(mintguard_certs::hex(hasher.finish().as_ref()))
        })?;
        if let Ok(mut h) = self.hashes.lock() {
            if h.len() >= MAX_CACHED_HASHES {
                h.clear();
            }
            h.insert(key, hash.clone());
        }
        Ok((path, hash, key))
    }

    /// The user name for `uid` from `/etc/passwd` (re-read when it changes;
    /// users only known to NSS modules get no `unix:user` selector).
    fn user_name(&self, uid: u32) -> Option<String> {
        let version = FileVersion::of(&std::fs::metadata("/etc/passwd").ok()?);
        let mut users = self.users.lock().ok()?;
        if users.as_ref().is_none_or(|(v, _)| *v != version) {
            let text = std::fs::read_to_string("/etc/passwd").ok()?;
            let map = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let uid = f.nth(1)?.parse().ok()?;
                    Some((uid, name.to_owned()))
                })
                .collect();
            *users = Some((version, map));
        }
        users.as_ref()?.1.get(&uid).cloned()
    }

    /// The workload's selectors, read now. For the agent's own helper
    /// (`credential-process`, `fetch`), uid and gid are the helper's and the
    /// executable is its parent's: the parent must be alive, not PID 1, in
    /// the helper's session (an orphan is reparented to init or a subreaper
    /// outside it), under the same uid, and started before the helper.
    ///
    /// Pid reuse: the start time taken at connect, before any read, must
    /// still be the pid's after the reads (a pid reused in between has
    /// another start time then; one `/proc/PID/stat` read per request, as
    /// the kernel builds that file at some cost).
    ///
    /// Exec: the executable hashed must be the one the process ran at
    /// accept, and still be the one it runs after the reads.
    ///
    /// A later call on the same connection, where the kernel pins the
    /// connecting process (`SO_PEERPIDFD`), reuses the executable's path and
    /// hash found before (see [`Attestor::attest_again`]).
    pub fn attest(&self, peer: &Peer) -> Result<Vec<String>, AttestError> {
        if let Some(writer) = peer.writers.foreign() {
            return Err(AttestError::ConnectionShared {
                connected: peer.pid,
                writer,
            });
        }
        if let Some(selectors) = self.attest_again(peer)? {
            return Ok(selectors);
        }
        let (mut path, mut sha, exe) = self.executable(peer.pid)?;
        if !exe.same_file(&peer.exe) {
            return Err(AttestError::ExecutedSinceConnect(peer.pid));
        }
        let mut file = exe;
        let helper = sha == self.own_sha256;
        if helper {
            let helper = stat(peer.pid)?;
            if helper.start_time != peer.start_time {
                return Err(AttestError::PeerGone(peer.pid));
            }
            (path, sha, file) = self.helper_parent(peer, &helper)?;
        }
        let cgroups = cgroup_selectors(peer.pid);
        // The pid still names the process that connected, running the same
        // executable.
        if stat(peer.pid)?.start_time != peer.start_time {
            return Err(AttestError::PeerGone(peer.pid));
        }
        if !exe_version(peer.pid)?.same_file(&exe) {
            return Err(AttestError::ExecutedSinceConnect(peer.pid));
        }
        // The agent's own helper is attested by its parent: never reused.
        peer.pinned.remember((!helper).then(|| Executable {
            version: exe,
            path: path.clone(),
            sha256: sha.clone(),
        }));
        Ok(self.selectors(peer, &path, &sha, &file, cgroups))
    }

    /// A later call of a connection whose process the kernel pins: the
    /// executable's path and hash found by the last attestation are reused
    /// while the process lives (its pidfd has not signalled its exit, so no
    /// other process holds its pid), runs the file it ran at accept, and
    /// that file is unchanged (the same [`FileVersion`] as when hashed: a
    /// write moves its ctime, which no user can set back). One `stat` of
    /// `/proc/PID/exe` before and after the reads stands for the two
    /// `readlink`s, the `open` and the `/proc/PID/stat` read of a first
    /// call; the cgroups, the user name and the path are read again.
    /// `None`: no pidfd, no earlier attestation or a changed file — the
    /// full reads are needed.
    fn attest_again(&self, peer: &Peer) -> Result<Option<Vec<String>>, AttestError> {
        let alive = |pinned: &Pinned| match pinned.exited() {
            Some(false) => Ok(true),
            Some(true) => Err(AttestError::PeerGone(peer.pid)),
            None => Ok(false),
        };
        if !alive(&peer.pinned)? {
            return Ok(None);
        }
        let Some(last) = peer.pinned.last() else {
            return Ok(None);
        };
        let before = exe_version(peer.pid)?;
        if !before.same_file(&peer.exe) {
            return Err(AttestError::ExecutedSinceConnect(peer.pid));
        }
        if before != last.version {
            return Ok(None);
        }
        let cgroups = cgroup_selectors(peer.pid);
        // Still alive after the reads: they were all of this process.
        alive(&peer.pinned)?;
        let after = exe_version(peer.pid)?;
        if !after.same_file(&peer.exe) {
            return Err(AttestError::ExecutedSinceConnect(peer.pid));
        }
        if after != last.version {
            return Ok(None);
        }
        Ok(Some(self.selectors(
            peer,
            &last.path,
            &last.sha256,
            &last.version,
            cgroups,
        )))
    }

    /// The selectors of `peer` running `file` (at `path`, hashed `sha`).
    fn selectors(
        &self,
        peer: &Peer,
        path: &Path,
        sha: &str,
        file: &FileVersion,
        cgroups: Vec<String>,
    ) -> Vec<String> {
        let mut selectors = vec![
            format!("unix:uid:{}", peer.uid),
            format!("unix:gid:{}", peer.gid),
        ];
        if let Some(name) = self.user_name(peer.uid) {
            selectors.push(format!("unix:user:{name}"));
        }
        // The path as the process sees it names, in the agent's view, the
        // very file it runs, or it is not given: in a container it names a
        // file of the container's filesystem, and after an upgrade the
        // replaced binary is no longer at its path.
        if std::fs::metadata(path).is_ok_and(|m| FileVersion::of(&m).same_file(file)) {
            selectors.push(format!("unix:path:{}", path.to_string_lossy()));
        }
        selectors.push(format!("unix:sha256:{sha}"));
        selectors.extend(cgroups);
        selectors
    }

    fn helper_parent(
        &self,
        peer: &Peer,
        helper: &Stat,
    ) -> Result<(PathBuf, String, FileVersion), AttestError> {
        let ppid = helper.ppid;
        if ppid <= 1 {
            return Err(AttestError::Helper(
                "its parent is PID 1 (the helper was orphaned)".into(),
            ));
        }
        // A container's init is PID 1 only in its own pid namespace.
        if innermost_pid(ppid)? == 1 {
            return Err(AttestError::Helper(format!(
                "its parent {ppid} is PID 1 of its pid namespace (the helper was orphaned)"
            )));
        }
        let parent = stat(ppid)?;
        if parent.session != helper.session {
            return Err(AttestError::Helper(format!(
                "its parent {ppid} is outside its session (orphaned to a subreaper?)"
            )));
        }
        if parent.start_time > helper.start_time {
            return Err(AttestError::Helper(format!(
                "its parent {ppid} started after it"
            )));
        }
        if real_uid(ppid)? != peer.uid {
            return Err(AttestError::Helper(format!(
                "its parent {ppid} runs under another uid"
            )));
        }
        let found = self.executable(ppid)?;
        // The parent is still the one checked, and still the helper's parent.
        if stat(ppid)?.start_time != parent.start_time || stat(peer.pid)?.ppid != ppid {
            return Err(AttestError::Helper(format!("its parent {ppid} exited")));
        }
        Ok(found)
    }
}

/// Which version of a file a cache holds: a rewrite in place (same second
/// included: nanoseconds, size) or a replacement (device, inode) changes it,
/// and so does any write whose owner then set the old mtime back (ctime,
/// which no user can set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileVersion {
    /// The same file (device and inode), whatever happened to it since: a
    /// running binary replaced by an upgrade keeps its inode (its ctime
    /// moves when it is unlinked).
    pub fn same_file(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// Runs `f` (a long read: hashing a binary not seen before) where it does
/// not hold up the agent's other requests: on the multi-thread runtime's
/// worker, the worker's other tasks move to another thread meanwhile.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The version of the file `pid` runs, through `/proc/PID/exe`.
fn exe_version(pid: i32) -> Result<FileVersion, AttestError> {
    let link = format!("/proc/{pid}/exe");
    let meta = std::fs::metadata(&link).map_err(|e| exe_error(pid, &link, e))?;
    Ok(FileVersion::of(&meta))
}

/// `cgroup:path:/…` for each cgroup of `pid`, and `cgroup:container_id:ID`
/// where a path holds a 64-hex container id (docker, containerd, CRI-O).
fn cgroup_selectors(pid: i32) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    cgroup_selectors_of(&text, Path::new("/sys/fs/cgroup"))
}

/// The selectors of a `/proc/PID/cgroup` text, the cgroup file systems
/// mounted under `root`.
fn cgroup_selectors_of(text: &str, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().take(32) {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.is_empty() || path.len() > 400 {
            continue;
        }
        let selector = format!("cgroup:path:{path}");
        if !out.contains(&selector) {
            out.push(selector);
        }
        // cgroup v2 ("0::/path") at the root, v1 under its controllers' directory.
        let mount = match controllers {
            "" => root.to_path_buf(),
            named => root.join(named.strip_prefix("name=").unwrap_or(named)),
        };
        let dir = mount.join(path.trim_start_matches('/'));
        if let Some(id) = container_id(Path::new(path))
            && runtime_made(&dir)
        {
            let selector = format!("cgroup:container_id:{id}");
            if !out.contains(&selector) {
                out.push(selector);
            }
        }
    }
    out
}

/// Whether a cgroup directory was made by root (a container runtime, systemd),
/// not in a subtree delegated to a user: with `systemd-run --user --scope
/// --unit docker-<id>` any user can name a cgroup of their own after a
/// victim's container (ids are readable in every `/proc/PID/cgroup`).
fn runtime_made(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == 0)
}

fn container_id(path: &Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let name = name.strip_suffix(".scope").unwrap_or(name);
        let id = name.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Peer {
        Peer::at_accept(
            i32::try_from(std::process::id()).unwrap(),
            0,
            0,
            Writers::default(),
            None,
        )
        .unwrap()
    }

    /// A process connects and exits before the agent accepts; its pid now
    /// names another live process (here: the test itself, as if reused).
    /// `SO_PEERPIDFD` still names the one that connected, so the newcomer
    /// is never attested in its place.
    #[test]
    fn a_peer_gone_before_accept_is_refused_even_if_its_pid_is_reused() {
        use nix::sys::socket::{getsockopt, sockopt::PeerPidfd};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b'GET')",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let (stream, _) = listener.accept().unwrap();
        let own = i32::try_from(std::process::id()).unwrap();
        match getsockopt(&stream, PeerPidfd) {
            Ok(pidfd) => {
                assert_eq!(pidfd_pid(&pidfd), None, "the connecting process is gone");
                assert_eq!(
                    Peer::at_accept(own, 0, 0, Writers::default(), Some(pidfd)),
                    Err(AttestError::PeerGone(own))
                );
            }
            // Exited and reaped before the pidfd could be taken: also gone.
            Err(e) => assert_eq!(e, nix::errno::Errno::ESRCH, "{e}"),
        }
        // A live peer's pidfd names it.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let pidfd = getsockopt(&a, PeerPidfd).unwrap();
        assert_eq!(pidfd_pid(&pidfd), Some(own));
        assert!(Peer::at_accept(own, 0, 0, Writers::default(), Some(pidfd)).is_ok());
        drop(b);
    }

    #[test]
    fn a_passwd_rewritten_within_the_same_second_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let second = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_514_400);
        let write = |text: &str, at: std::time::SystemTime| {
            std::fs::write(&path, text).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(at).unwrap();
            FileVersion::of(&std::fs::metadata(&path).unwrap())
        };
        let first = write("alice:x:1000:1000::/home/alice:/bin/sh\n", second);
        // Same size, same second, 0.5 s later: only the nanoseconds differ.
        let rewritten = write(
            "alicf:x:1000:1000::/home/alice:/bin/sh\n",
            second + std::time::Duration::from_millis(500),
        );
        assert_eq!(first.mtime, rewritten.mtime);
        assert_ne!(first, rewritten);
        // Replaced by rename (what editors and `vipw` do): a new inode.
        let next = dir.path().join("passwd.new");
        std::fs::write(&next, "alicf:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        let replaced = FileVersion::of(&std::fs::metadata(&path).unwrap());
        assert_ne!(rewritten.ino, replaced.ino);
        assert_eq!(
            replaced,
            FileVersion::of(&std::fs::metadata(&path).unwrap())
        );
        // Patched in place, same size, the old mtime set back: ctime moved.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let old_mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(replaced.mtime).unwrap(),
                u32::try_from(replaced.mtime_nsec).unwrap(),
            );
        let patched = write("alicg:x:1000:1000::/home/alice:/bin/sh\n", old_mtime);
        assert_eq!(
            (patched.ino, patched.size, patched.mtime, patched.mtime_nsec),
            (
                replaced.ino,
                replaced.size,
                replaced.mtime,
                replaced.mtime_nsec
            )
        );
        assert_ne!(patched, replaced);
    }

    #[test]
    fn stat_parses_names_with_spaces_and_parentheses() {
        let line = "4242 (a) b (c)) S 17 4242 99 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 777123 1000 200 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 17,
                session: 99,
                start_time: 777_123,
                exited: false,
            })
        );
        // A zombie keeps its stat file and start time until it is reaped.
        let zombie = line.replacen(" S ", " Z ", 1);
        assert!(parse_stat(&zombie).unwrap().exited);
        assert_eq!(parse_stat("4242 (truncated) S 17"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        let me = stat(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert_eq!(
            u32::try_from(me.ppid).unwrap(),
            std::os::unix::process::parent_id()
        );
        assert!(me.start_time > 0);
    }

    #[test]
    fn a_pid_whose_start_time_changed_is_refused() {
        let attestor = Attestor::new().unwrap();
        let mut peer = me();
        peer.start_time += 1;
        assert_eq!(attestor.attest(&peer), Err(AttestError::PeerGone(peer.pid)));
    }

    #[test]
    fn a_process_running_another_executable_than_at_accept_is_refused() {
        let attestor = Attestor::new().unwrap();
        let mut peer = me();
        assert!(attestor.attest(&peer).is_ok());
        peer.exe.ino += 1;
        assert_eq!(
            attestor.attest(&peer),
            Err(AttestError::ExecutedSinceConnect(peer.pid))
        );
    }

    /// A connection's later calls reuse its first attestation's executable
    /// only while the kernel pins the process: an exec since is refused,
    /// and so is a call after the process exited.
    #[test]
    fn a_reused_attestation_still_sees_an_exec_and_an_exit() {
        use nix::sys::socket::{getsockopt, sockopt::PeerPidfd};
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Connects, waits for a byte, then execs sleep (the same pid).
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import os,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
                 s.send(b'x'); s.recv(1); os.execvp('sleep', ['sleep', '30'])",
            ])
            .arg(&path)
            .spawn()
            .unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        let cred = getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).unwrap();
        let pidfd = getsockopt(&stream, PeerPidfd).unwrap();
        let peer = Peer::at_accept(
            cred.pid(),
            cred.uid(),
            cred.gid(),
            Writers::default(),
            Some(pidfd),
        )
        .unwrap();
        let attestor = Attestor::new().unwrap();
        let first = attestor.attest(&peer).unwrap();
        assert!(
            peer.pinned.last().is_some(),
            "a pinned peer's executable is kept"
        );
        assert_eq!(
            attestor.attest(&peer).unwrap(),
            first,
            "reused: the same answer"
        );
        // The process execs: the next call is refused, cached or not.
        let exe_before = std::fs::read_link(format!("/proc/{}/exe", cred.pid())).unwrap();
        stream.write_all(b"y").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/exe", cred.pid()))
            .ok()
            .as_ref()
            == Some(&exe_before)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exec'd"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            attestor.attest(&peer),
            Err(AttestError::ExecutedSinceConnect(cred.pid()))
        );
        // The process exits: its pidfd says so before any /proc read.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(peer.pinned.exited(), Some(true));
        assert_eq!(
            attestor.attest(&peer),
            Err(AttestError::PeerGone(cred.pid()))
        );
    }

    #[test]
    fn a_connection_another_process_wrote_on_is_refused() {
        let attestor = Attestor::new().unwrap();
        let peer = me();
        peer.writers.note(peer.pid, Some(peer.pid));
        assert!(attestor.attest(&peer).is_ok());
        peer.writers.note(peer.pid, Some(peer.pid + 1));
        // The first other writer stays, and so does the refusal.
        peer.writers.note(peer.pid, None);
        peer.writers.note(peer.pid, Some(peer.pid));
        assert_eq!(
            attestor.attest(&peer),
            Err(AttestError::ConnectionShared {
                connected: peer.pid,
                writer: peer.pid + 1
            })
        );
        let unstamped = me();
        unstamped.writers.note(unstamped.pid, None);
        assert_eq!(unstamped.writers.foreign(), Some(-1));
    }

    #[test]
    fn container_ids_are_found_in_common_layouts() {
        let id = "a".repeat(64);
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/burstable/pod1/cri-containerd:{id}"),
        ] {
            assert_eq!(container_id(Path::new(&path)), Some(id.clone()), "{path}");
        }
        assert_eq!(container_id(Path::new("/user.slice/user-0.slice")), None);
    }

    #[test]
    fn a_container_id_counts_only_in_a_cgroup_root_made() {
        let root = tempfile::tempdir().unwrap();
        let id = "b".repeat(64);
        let runtime = format!("system.slice/docker-{id}.scope");
        let delegated =
            format!("user.slice/user-1000.slice/user@1000.service/app.slice/docker-{id}.scope");
        for dir in [&runtime, &delegated] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::os::unix::fs::chown(root.path().join(&delegated), Some(1000), Some(1000)).unwrap();
        let selectors = |path: &str| cgroup_selectors_of(&format!("0::/{path}\n"), root.path());
        assert_eq!(
            selectors(&runtime),
            [
                format!("cgroup:path:/{runtime}"),
                format!("cgroup:container_id:{id}")
            ]
        );
        // Named after the same container, in a user's own subtree: the path
        // only.
        assert_eq!(selectors(&delegated), [format!("cgroup:path:/{delegated}")]);
        // cgroup v1: under the controller's directory.
        std::fs::create_dir_all(root.path().join("cpu,cpuacct").join(&runtime)).unwrap();
        assert!(
            cgroup_selectors_of(&format!("4:cpu,cpuacct:/{runtime}\n"), root.path())
                .contains(&format!("cgroup:container_id:{id}"))
        );
        // Gone (or never there): no container id.
        assert_eq!(
            cgroup_selectors_of(&format!("0::/docker/{}\n", "c".repeat(64)), root.path()).len(),
            1
        );
    }
}
