//! The accelerator probe on this machine: a paravirtual /dev/kvm that crashes stock kernels,
//! so the answer must be TCG. Runs in the nextest group `vm`.

mod support;

use std::time::{Duration, Instant};

use wrenn_agent::vmm::{Accel, choose_accel};

#[tokio::test]
async fn probe_chooses_tcg_here_caches_and_honours_override() {
    let (kernel, initrd) = support::test_guest();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("state/accel.json");

    let t0 = Instant::now();
    let (accel, reason) = choose_accel(&kernel, &initrd, &cache, None, Duration::from_secs(20))
        .await
        .expect("probe");
    let probe_time = t0.elapsed();
    eprintln!("probe took {probe_time:?}: {accel} ({reason})");
    assert_eq!(accel, Accel::Tcg, "{reason}");
    assert!(reason.starts_with("tcg:"), "{reason}");
    assert!(probe_time < Duration::from_secs(25), "hard timeout ignored");

    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).expect("cache written")).unwrap();
    let entries = cached["entries"].as_object().unwrap();
    assert_eq!(entries.len(), 1);
    let (key, entry) = entries.iter().next().unwrap();
    assert!(
        key.contains(&format!("kernel={}:", kernel.display())),
        "{key}"
    );
    assert!(key.contains("qemu=QEMU emulator version"), "{key}");
    assert_eq!(entry["accel"], "tcg");

    let t1 = Instant::now();
    let (again, why) = choose_accel(&kernel, &initrd, &cache, None, Duration::from_secs(20))
        .await
        .unwrap();
    let cached_time = t1.elapsed();
    eprintln!("cached answer took {cached_time:?}");
    assert_eq!(again, Accel::Tcg);
    assert!(why.contains("cached"), "{why}");
    assert!(cached_time < Duration::from_millis(500), "{cached_time:?}");

    let (forced, why) = choose_accel(
        &kernel,
        &initrd,
        &cache,
        Some(Accel::Kvm),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(forced, Accel::Kvm);
    assert!(why.contains("forced"), "{why}");
}

#[tokio::test]
async fn cache_is_per_kernel() {
    let (kernel, initrd) = support::test_guest();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("accel.json");
    // Someone else's answer for a different kernel must not be used for ours.
    std::fs::write(
        &cache,
        r#"{"entries":{"kernel=/x/vmlinuz:1:2.3;qemu=x;host=y":{"accel":"kvm","reason":"kvm: fake","probed_at_unix":0}}}"#,
    )
    .unwrap();
    let other = dir.path().join("vmlinuz");
    std::fs::copy(&kernel, &other).unwrap();
    let (accel, reason) = choose_accel(&other, &initrd, &cache, None, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(accel, Accel::Tcg, "{reason}");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached["entries"].as_object().unwrap().len(), 2);
}
