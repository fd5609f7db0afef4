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
use std::sync::Mutex;

mod peer;

use self::peer::Executable;
pub use self::peer::{Peer, Pinned, Writers, pidfd_pid};

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
    /// hash found before (see `attest_again`).
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
    /// `/proc/PID/exe` after the reads stands for the two `readlink`s, the
    /// `open` and the `/proc/PID/stat` read of a first call: what it finds
    /// is what the selectors name, whatever the process ran in between
    /// (its bytes were all read before, and all its own). The cgroups are
    /// read again through the connection's open `/proc/PID/cgroup`; the
    /// user name and the path are read again. `None`: no pidfd, no earlier
    /// attestation or a changed file — the full reads are needed.
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
        let cgroups = cgroup_selectors_of(
            &peer.pinned.cgroup_text(peer.pid),
            Path::new("/sys/fs/cgroup"),
        );
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
mod tests;
