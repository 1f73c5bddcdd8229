//! Virtual machine monitors behind one trait. The qemu driver (`-M microvm`, QMP) is the
//! portable default; a VMM process's lifetime is independent of any request and of the
//! agent itself, and a restarted agent re-adopts it.
