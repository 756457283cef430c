//! This process's resident memory, for `owrun bench`'s memory line. Linux reports it in
//! /proc/self/status; elsewhere it is unknown (None).

/// Resident set size now, in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

/// The largest resident set size so far, in bytes.
pub fn peak_resident_bytes() -> Option<u64> {
    status_field("VmHWM:")
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn resident_memory_is_read() {
        let block = vec![1u8; 64 << 20];
        assert!(block.iter().all(|&b| b == 1));
        let now = super::resident_bytes().unwrap();
        assert!(now >= 64 << 20, "{now} bytes resident while holding 64 MiB");
        assert!(super::peak_resident_bytes().unwrap() >= now);
    }
}
