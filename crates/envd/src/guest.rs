//! What a restored guest must change about itself (envd as a VM's PID 1 only): the wall clock,
//! stopped while the VM was paused or copied from a snapshot, and the kernel's random
//! generator, whose state a snapshot would otherwise hand to every clone unchanged.

use std::io;
use std::os::fd::AsRawFd;

/// Most entropy bytes one `/init` may carry.
pub const MAX_ENTROPY_BYTES: usize = 512;

/// Sets CLOCK_REALTIME to `t` when it is off by more than `tolerance`; whether it did.
pub fn set_clock(t: time::OffsetDateTime, tolerance: time::Duration) -> io::Result<bool> {
    let now = time::OffsetDateTime::now_utc();
    if (now - t).abs() <= tolerance {
        return Ok(false);
    }
    let ts = libc::timespec {
        tv_sec: t.unix_timestamp() as libc::time_t,
        tv_nsec: libc::c_long::from(t.nanosecond() as i32),
    };
    // SAFETY: a plain syscall on a timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

// From <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `seed` into the kernel's input pool, credited, and reseeds the CRNG at once, so the
/// next read of /dev/urandom already differs from any other guest restored from the same state.
pub fn reseed(seed: &[u8]) -> io::Result<()> {
    if seed.is_empty() || seed.len() > MAX_ENTROPY_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("entropy must be 1..={MAX_ENTROPY_BYTES} bytes"),
        ));
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut buf = Vec::with_capacity(8 + seed.len());
    buf.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    buf.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    buf.extend_from_slice(seed);
    // Room for the u32 array's alignment padding.
    buf.resize(8 + seed.len().div_ceil(4) * 4, 0);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: the ioctls read a rand_pool_info laid out above, inside `buf`.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, buf.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_within_tolerance_is_left_alone() {
        let changed = set_clock(time::OffsetDateTime::now_utc(), time::Duration::seconds(5))
            .expect("no syscall needed");
        assert!(!changed);
    }

    #[test]
    fn oversized_or_empty_entropy_is_refused() {
        assert!(reseed(&[]).is_err());
        assert!(reseed(&[0u8; MAX_ENTROPY_BYTES + 1]).is_err());
    }
}
