//! Root disks: per-sandbox copy-on-write overlays over a shared read-only base image.
