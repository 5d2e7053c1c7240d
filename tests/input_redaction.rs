//! Redis passwords never reach the broker's output: a config error, a Redis
//! that cannot be used, `serve --help` with `TASKBROKER_REDIS_URL` set. Runs
//! the real binary.

#[path = "common/env.rs"]
mod env;

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_taskbroker");
const SECRET: &str = "s3cretpw";

fn run(args: &[&str], vars: &[(&str, &str)]) -> (Output, String) {
    let mut cmd = Command::new(BIN);
    env::clear(&mut cmd).args(args).envs(vars.iter().copied());
    let out = cmd.output().expect("taskbroker runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

#[test]
fn a_bad_redis_url_is_reported_without_its_password() {
    let url = format!("http://alice:{SECRET}@10.0.0.1:6379");
    let (out, text) = run(&["serve", "--storage", "redis", "--redis-url", &url], &[]);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(text.contains("redis_url:") && text.contains("alice:***@10.0.0.1"), "{text}");
    assert!(!text.contains(SECRET), "the password leaked: {text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tb.toml");
    std::fs::write(&file, format!("storage = \"redis\"\nredis_url = \"{url}\"\n")).unwrap();
    let (out, text) = run(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(!text.contains(SECRET), "the password leaked: {text}");
}

#[test]
fn a_redis_that_cannot_be_used_is_named_without_its_password() {
    // Nothing listens on port 1: the connection is refused at once.
    let url = format!("redis://:{SECRET}@127.0.0.1:1/0");
    let (out, text) =
        run(&["serve", "--storage", "redis", "--listen", "127.0.0.1:0"], &[("TASKBROKER_REDIS_URL", &url)]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot use Redis at redis://:***@127.0.0.1:1/0"), "{text}");
    assert!(!text.contains(SECRET), "the password leaked: {text}");
}

#[test]
fn serve_help_does_not_show_the_redis_url_from_the_environment() {
    let url = format!("redis://:{SECRET}@10.0.0.1:6379");
    let (out, text) = run(&["serve", "--help"], &[("TASKBROKER_REDIS_URL", &url)]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("TASKBROKER_REDIS_URL"), "{text}");
    assert!(!text.contains(SECRET), "the password leaked: {text}");
}
