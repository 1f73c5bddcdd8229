//! TAP creation. Netlink cannot create TUN/TAP devices, so this uses the `/dev/net/tun` ioctls
//! like `ip tuntap add` does.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use super::NetError;

/// Creates a persistent, root-owned TAP called `name` in the calling thread's namespace. QEMU
/// later attaches to it by name (`-netdev tap,ifname=<name>,script=no,downscript=no`).
pub(crate) fn create_persistent(name: &str) -> Result<(), NetError> {
    let err = |op: &'static str, source: io::Error| NetError::Tap {
        name: name.to_owned(),
        op,
        source,
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(err(
            "check name",
            io::Error::new(io::ErrorKind::InvalidInput, "bad interface name length"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| err("open /dev/net/tun", e))?;

    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // IFF_TUN_EXCL: fail instead of attaching to an existing device of that name.
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short;

    let fd = tun.as_raw_fd();
    // SAFETY: fd is an open /dev/net/tun; TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) {
            return Err(NetError::AlreadyExists {
                what: format!("TAP {name}"),
            });
        }
        return Err(err("TUNSETIFF", e));
    }
    // SAFETY: integer-argument ioctls on the fd we own.
    if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, 0 as libc::c_ulong) } < 0 {
        return Err(err("TUNSETOWNER", io::Error::last_os_error()));
    }
    // Persistent: the device outlives this fd, so QEMU can open it by name later.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err("TUNSETPERSIST", io::Error::last_os_error()));
    }
    Ok(())
}
