//! `deploy/systemd/` kept true to the binary. Every flag a unit's `ExecStart` passes and every
//! variable a unit (`Environment=`) or an EnvironmentFile example sets must be one `wrenn
//! server` / `wrenn agent` reads: their `--help` lists each flag with its `[env: NAME=]`. The
//! other way round, every variable `--help` lists must be in the example, each under its own
//! one-line comment, so a new flag cannot go undocumented. Nothing runs but `wrenn <sub> --help`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A variable read outside clap (so absent from `--help`): its name, the source file that reads
/// it (relative to this crate) and what that file must contain for the claim to hold.
type ExtraEnv = (&'static str, &'static str, &'static str);

/// `tracing_subscriber`'s filter, read by `wrenn` for every long-running subcommand.
const RUST_LOG: ExtraEnv = ("RUST_LOG", "src/main.rs", "EnvFilter::try_from_default_env");

/// One systemd unit, the subcommand it runs and its EnvironmentFile example.
struct Unit {
    subcommand: &'static str,
    service: &'static str,
    env_example: &'static str,
    extra_env: &'static [ExtraEnv],
}

const UNITS: [Unit; 2] = [
    Unit {
        subcommand: "server",
        service: "wrenn-server.service",
        env_example: "wrenn-server.env.example",
        extra_env: &[RUST_LOG],
    },
    Unit {
        subcommand: "agent",
        service: "wrenn-agent.service",
        env_example: "wrenn-agent.env.example",
        extra_env: &[
            RUST_LOG,
            (
                "WRENN_QEMU",
                "../wrenn-agent/src/preflight.rs",
                "\"WRENN_QEMU\"",
            ),
            (
                "WRENN_QEMU_IMG",
                "../wrenn-agent/src/preflight.rs",
                "\"WRENN_QEMU_IMG\"",
            ),
            (
                "WRENN_NFT",
                "../wrenn-agent/src/preflight.rs",
                "\"WRENN_NFT\"",
            ),
        ],
    },
];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    crate_dir().join("../../deploy/systemd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Collapses every run of whitespace to one space, so wrapped help text matches too.
fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `wrenn <subcommand> --help`, with an empty environment (no value of the caller's shows up
/// in `[env: NAME=value]`) in an empty directory (no `.env` is loaded).
fn help(subcommand: &str) -> String {
    let cwd = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .args([subcommand, "--help"])
        .env_clear()
        .current_dir(cwd.path())
        .output()
        .expect("run wrenn");
    assert!(
        out.status.success(),
        "wrenn {subcommand} --help: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    words(&String::from_utf8(out.stdout).expect("help is UTF-8"))
}

/// Whether `help` documents `flag` (`--name` or `-x`) as a whole word.
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        before.is_none_or(|c| c == ' ' || c == ',')
            && after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The variables `--help` lists: `[env: NAME=]`, or `[env: NAME]` for hidden values.
fn help_env(help: &str) -> BTreeSet<String> {
    help.match_indices("[env: ")
        .map(|(i, m)| {
            help[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| is_env_name(n))
        .collect()
}

/// The name a `NAME=value` line assigns, if it is one.
fn assigned_name(line: &str) -> Option<&str> {
    let (name, _) = line.split_once('=')?;
    is_env_name(name).then_some(name)
}

/// `(section, key, value)` of every directive, continuation lines (`\` at the end) joined.
fn directives(unit: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(rest) = line.strip_suffix('\\') {
            pending.push_str(rest);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if let Some(name) = full.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((k, v)) = full.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        } else {
            panic!("not a directive: {full:?}");
        }
    }
    assert!(pending.is_empty(), "unit ends in a continuation line");
    out
}

/// The `[Service]` values of `key`.
fn service_values(directives: &[(String, String, String)], key: &str) -> Vec<String> {
    directives
        .iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// The words of a command line, without systemd's prefixes (`-@:+!`) or plain quotes.
fn command_words(exec_start: &str) -> Vec<String> {
    let line = exec_start.trim_start_matches(['-', '@', ':', '+', '!']);
    line.split_whitespace()
        .map(|w| w.trim_matches(['"', '\'']).to_owned())
        .collect()
}

/// The flags a command line passes (`--name value` and `--name=value` give `--name`).
fn flags(words: &[String]) -> Vec<String> {
    words
        .iter()
        .filter(|w| w.starts_with('-') && w.len() > 1)
        .map(|w| w.split('=').next().unwrap_or(w.as_str()).to_owned())
        .collect()
}

#[test]
fn parsing_helpers() {
    let d = directives(
        "# c\n[Service]\nExecStart=/usr/bin/wrenn server \\\n  --listen=1.2.3.4:5 \\\n  --data-dir /x\n",
    );
    let exec = service_values(&d, "ExecStart");
    assert_eq!(exec.len(), 1);
    let w = command_words(&exec[0]);
    assert_eq!(&w[..2], ["/usr/bin/wrenn", "server"]);
    assert_eq!(flags(&w[2..]), ["--listen", "--data-dir"]);
    let h = words(
        "Options:\n  --data-dir <DIR>  x [env: WRENN_DATA_DIR=]\n  --db  y [env: DATABASE_URL]\n  -h, --help",
    );
    assert!(has_flag(&h, "--data-dir") && has_flag(&h, "--db") && has_flag(&h, "-h"));
    assert!(!has_flag(&h, "--data") && !has_flag(&h, "--help-me"));
    assert_eq!(
        help_env(&h),
        BTreeSet::from(["WRENN_DATA_DIR".to_owned(), "DATABASE_URL".to_owned()])
    );
    assert_eq!(assigned_name("#X_1=2".trim_start_matches('#')), Some("X_1"));
    assert_eq!(assigned_name("Failed 3 in a row; 0 = never"), None);
}

#[test]
fn units_pass_only_flags_and_variables_wrenn_knows() {
    for unit in &UNITS {
        let text = help(unit.subcommand);
        let known_env = help_env(&text);
        assert!(
            !known_env.is_empty(),
            "wrenn {} --help lists no [env: ...]",
            unit.subcommand
        );
        let extra: BTreeSet<&str> = unit.extra_env.iter().map(|(n, _, _)| *n).collect();
        let path = deploy_dir().join(unit.service);
        let d = directives(&read(&path));

        let exec = service_values(&d, "ExecStart");
        assert_eq!(exec.len(), 1, "{}: one ExecStart", unit.service);
        let w = command_words(&exec[0]);
        assert!(
            w.len() >= 2 && w[0].starts_with('/') && w[0].ends_with("/wrenn"),
            "{}: ExecStart must run wrenn by absolute path: {:?}",
            unit.service,
            exec[0]
        );
        assert_eq!(w[1], unit.subcommand, "{}: subcommand", unit.service);
        for flag in flags(&w[2..]) {
            assert!(
                has_flag(&text, &flag),
                "{}: ExecStart passes {flag}, which `wrenn {} --help` does not list",
                unit.service,
                unit.subcommand
            );
        }

        for value in service_values(&d, "Environment") {
            for assignment in value.split_whitespace() {
                let assignment = assignment.trim_matches('"');
                let name = assigned_name(assignment).unwrap_or_else(|| {
                    panic!("{}: Environment={value:?} is not NAME=value", unit.service)
                });
                assert!(
                    known_env.contains(name) || extra.contains(name),
                    "{}: Environment= sets {name}, which wrenn {} does not read",
                    unit.service,
                    unit.subcommand
                );
            }
        }

        let files = service_values(&d, "EnvironmentFile");
        assert_eq!(files.len(), 1, "{}: one EnvironmentFile", unit.service);
        let file = Path::new(files[0].trim_start_matches('-'));
        assert_eq!(
            file.file_name()
                .map(|n| format!("{}.example", n.to_string_lossy())),
            Some(unit.env_example.to_owned()),
            "{}: EnvironmentFile={} should be the installed {}",
            unit.service,
            files[0],
            unit.env_example
        );
    }
}

#[test]
fn env_examples_list_every_variable_once_with_a_comment() {
    for unit in &UNITS {
        let known_env = help_env(&help(unit.subcommand));
        let path = deploy_dir().join(unit.env_example);
        let text = read(&path);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut listed = BTreeSet::new();
        for (i, line) in lines.iter().enumerate() {
            // Set (`NAME=v`) or shown commented out (`#NAME=v`).
            let Some(name) = assigned_name(line.trim_start_matches('#').trim_start()) else {
                continue;
            };
            let comment = i
                .checked_sub(1)
                .map(|p| lines[p])
                .filter(|p| p.starts_with('#') && p.len() > 1)
                .filter(|p| assigned_name(p.trim_start_matches('#').trim_start()).is_none());
            assert!(
                comment.is_some(),
                "{}:{}: {name} needs a one-line comment on the line above",
                unit.env_example,
                i + 1
            );
            assert!(
                listed.insert(name.to_owned()),
                "{}: {name} listed twice",
                unit.env_example
            );
        }

        for name in &listed {
            let extra = unit.extra_env.iter().any(|(n, _, _)| n == name);
            assert!(
                known_env.contains(name) || extra,
                "{}: {name} is not read by wrenn {} (not in its --help)",
                unit.env_example,
                unit.subcommand
            );
        }
        for name in &known_env {
            assert!(
                listed.contains(name),
                "{}: wrenn {} reads {name} (see --help); document it",
                unit.env_example,
                unit.subcommand
            );
        }
        for (name, file, needle) in unit.extra_env {
            assert!(
                listed.contains(*name),
                "{}: {name} is missing",
                unit.env_example
            );
            let source = read(&crate_dir().join(file));
            assert!(
                source.contains(needle),
                "{file} no longer contains {needle:?}: is {name} still read?"
            );
        }
    }
}
