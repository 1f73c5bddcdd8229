//! qcow2 overlays against the real qemu-img.

mod support;

use std::process::Command;

use wrenn_agent::storage::{StorageError, allocated_bytes, create_overlay, virtual_size};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn overlay_is_sparse_backed_by_base_and_grows_with_writes() {
    let dir = tempfile::tempdir().unwrap();
    let base = support::raw_base(dir.path(), 64);
    let overlay = dir.path().join("root.qcow2");
    create_overlay(&base, &overlay, None).await.unwrap();

    assert_eq!(virtual_size(&overlay).await.unwrap(), 64 * MIB);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
    assert_eq!(info["backing-filename-format"], "raw");

    let before = allocated_bytes(&overlay).unwrap();
    assert!(before < MIB, "fresh overlay allocates {before} bytes");
    let st = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 4M"])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(st.status.success(), "qemu-io: {st:?}");
    let after = allocated_bytes(&overlay).unwrap();
    assert!(after >= before + 4 * MIB, "allocated {before} -> {after}");
    // The base is never written through the overlay.
    assert_eq!(allocated_bytes(&base).unwrap(), 0);
}

#[tokio::test]
async fn overlay_can_be_larger_than_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = support::raw_base(dir.path(), 64);
    let overlay = dir.path().join("root.qcow2");
    create_overlay(&base, &overlay, Some(128)).await.unwrap();
    assert_eq!(virtual_size(&overlay).await.unwrap(), 128 * MIB);
    // Equal to the base is fine too.
    let same = dir.path().join("same.qcow2");
    create_overlay(&base, &same, Some(64)).await.unwrap();
    assert_eq!(virtual_size(&same).await.unwrap(), 64 * MIB);
}

#[tokio::test]
async fn overlay_smaller_than_base_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let base = support::raw_base(dir.path(), 64);
    let overlay = dir.path().join("root.qcow2");
    for mb in [0, 32, 63] {
        let err = create_overlay(&base, &overlay, Some(mb)).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidSize { requested_mb, base_bytes }
                if requested_mb == mb && base_bytes == 64 * MIB),
            "{err:?}"
        );
        assert!(!overlay.exists());
    }
}

#[tokio::test]
async fn missing_base_and_existing_overlay_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("root.qcow2");
    let err = create_overlay(&dir.path().join("nope.raw"), &overlay, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::MissingBase(_)), "{err:?}");
    assert!(!overlay.exists());

    let base = support::raw_base(dir.path(), 16);
    create_overlay(&base, &overlay, None).await.unwrap();
    let err = create_overlay(&base, &overlay, None).await.unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists(_)), "{err:?}");

    let err = virtual_size(&dir.path().join("nope.qcow2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::QemuImg { .. }), "{err:?}");
}
