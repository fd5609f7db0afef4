//! Fault hooks for the crash-safety and race tests: debug builds stop or
//! pause at a named point when `MINTGUARD_FAULT` / `MINTGUARD_FAULT_WAIT`
//! name it; release builds compile them to nothing.

/// A crash point for the crash-safety tests: debug builds abort here when
/// `MINTGUARD_FAULT` names it; release builds compile it to nothing.
pub fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("MINTGUARD_FAULT").is_ok_and(|f| f == name) {
        tracing::error!(point = name, "fault injection: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A pause point for the race tests: debug builds with
/// `MINTGUARD_FAULT_WAIT=NAME:PATH` create `PATH.reached` here and wait
/// (at most a minute) until `PATH` is removed; release builds compile it to
/// nothing.
pub async fn fault_wait(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var("MINTGUARD_FAULT_WAIT").ok().and_then(|v| {
        v.strip_prefix(&format!("{name}:"))
            .map(std::path::PathBuf::from)
    }) {
        let mut reached = path.clone().into_os_string();
        reached.push(".reached");
        let _ = std::fs::write(&reached, b"");
        for _ in 0..6000 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
