//! A debootstrap that fails leaves nothing in the cache, names its log, and quotes the
//! end of it. The mirror is a closed port on loopback, so nothing leaves the machine.

use wrenn_image::cache::DebootstrapKey;
use wrenn_image::progress::{ProgressMode, Steps};
use wrenn_image::{ImageError, debootstrap, prereq};

#[test]
fn failed_debootstrap_reports_its_log_and_caches_nothing() {
    prereq::check(&prereq::BUILD[..1]).expect("debootstrap installed");
    let cache = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mirror = format!("http://127.0.0.1:{port}/debian");
    let packages = vec!["bash".to_string()];
    let key = DebootstrapKey {
        suite: "bookworm",
        variant: "minbase",
        mirror: &mirror,
        packages: &packages,
    };
    let steps = Steps::new(ProgressMode::Hidden);
    let step = steps.start("debootstrap");
    let err = debootstrap::ensure(cache.path(), &key, &step).expect_err("no mirror there");
    drop(step);

    let ImageError::Debootstrap { log, tail, .. } = &err else {
        panic!("unexpected error: {err}");
    };
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(
        logged.starts_with("$ debootstrap --variant=minbase"),
        "{logged}"
    );
    assert!(!tail.is_empty() && logged.contains(tail.lines().last().unwrap()));
    assert!(err.to_string().contains(&log.display().to_string()));

    let tree = debootstrap::tree_path(cache.path(), &key);
    assert!(!tree.exists(), "a failed run must not look cached");
    let leftovers: Vec<_> = std::fs::read_dir(tree.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
}
