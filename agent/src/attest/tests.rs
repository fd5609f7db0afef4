//! Attestation against real processes and files.

use super::*;

/// A listening Unix socket and a `python3 -c script` process started to
/// connect to it (`sys.argv[1]` is the socket's path).
fn python_peer(
    script: &str,
) -> (
    tempfile::TempDir,
    std::os::unix::net::UnixListener,
    std::process::Child,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .spawn()
        .unwrap();
    (dir, listener, child)
}

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
    // Connects, waits for a byte, then execs sleep (the same pid).
    let (_dir, listener, mut child) = python_peer(
        "import os,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
         s.send(b'x'); s.recv(1); os.execvp('sleep', ['sleep', '30'])",
    );
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

/// A connection's later attestations read the process's cgroups afresh:
/// a process moved to another cgroup between two requests on one kept-alive
/// connection is named by the new one (the connection's open
/// `/proc/PID/cgroup` renders the file again on each read), and once the
/// process is gone its connection attests nothing.
#[test]
fn a_kept_connection_sees_its_process_move_between_cgroups() {
    use nix::sys::socket::{getsockopt, sockopt::PeerPidfd};
    // Connects and stays (killed below).
    let (_dir, listener, mut child) = python_peer(
        "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(30)",
    );
    let (stream, _) = listener.accept().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let pidfd = getsockopt(&stream, PeerPidfd).ok();
    let peer = Peer::at_accept(pid, 0, 0, Writers::default(), pidfd).unwrap();
    let attestor = Attestor::new().unwrap();
    let cgroup = format!("mintguard-attest-{}", std::process::id());
    let moved = Path::new("/sys/fs/cgroup/pids").join(&cgroup);
    let selector = format!("cgroup:path:/{cgroup}");

    let first = attestor.attest(&peer).unwrap();
    assert!(!first.contains(&selector), "{first:?}");
    std::fs::create_dir(&moved).expect("the tests run as root with cgroup v1 pids mounted");
    std::fs::write(moved.join("cgroup.procs"), pid.to_string()).unwrap();
    let second = attestor.attest(&peer).unwrap();
    let third = attestor.attest(&peer).unwrap();

    child.kill().unwrap();
    child.wait().unwrap();
    let gone = attestor.attest(&peer);
    std::fs::remove_dir(&moved).unwrap();
    assert!(second.contains(&selector), "{second:?}");
    assert_eq!(second, third);
    assert_eq!(gone, Err(AttestError::PeerGone(pid)));
}
