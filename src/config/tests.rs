use super::*;

#[test]
fn the_example_parses_validates_and_resolves() {
    let config = Config::from_toml(EXAMPLE).unwrap();
    config.validate().unwrap();
    let policies = config.policies();
    let emails = policies.get("emails");
    assert_eq!(emails.default_priority, 3);
    assert_eq!(emails.max_attempts, 5, "inherits [queues.default]");
    assert_eq!(policies.get("undeclared").lease_duration, Duration::from_secs(30));
    assert_eq!(config.routes()[0].priority, Some(7));
}

#[test]
fn an_empty_file_is_the_defaults() {
    let config = Config::from_toml("").unwrap();
    config.validate().unwrap();
    assert_eq!(config.listen, "127.0.0.1:50051");
    assert_eq!(config.storage, StorageKind::Embedded);
    assert_eq!(config.policies().get("default"), &QueuePolicy::default());
}

#[test]
fn queues_inherit_from_the_default_queue() {
    let config = Config::from_toml(
        r#"
        [queues.default]
        max_attempts = 9
        retention = "1h"
        [queues.other]
        retention = "2h"
        "#,
    )
    .unwrap();
    let p = config.policies();
    assert_eq!(p.get("other").max_attempts, 9);
    assert_eq!(p.get("other").retention, Duration::from_secs(7200));
    assert_eq!(p.get("not-declared").max_attempts, 9);
}

#[test]
fn unknown_fields_are_refused() {
    let err = Config::from_toml("listn = \"x\"").unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
    let err = Config::from_toml("[queues.a]\nmax_attempt = 1").unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn validate_names_every_problem_with_its_path() {
    let config = Config::from_toml(
        r#"
        listen = "nowhere"
        strict_queues = true
        [queues."bad name"]
        [queues.q]
        max_attempts = 0
        lease_duration = "13h"
        default_priority = 10
        retry_backoff = { initial = "1m", max = "1s", multiplier = 0.5, jitter = 2.0 }
        [[routes]]
        kind = ""
        queue = "missing"
        priority = 12
        "#,
    )
    .unwrap();
    let errors = config.validate().unwrap_err();
    for expected in [
        "listen:",
        "queues.bad name:",
        "queues.q.max_attempts: must be >= 1",
        "queues.q.lease_duration:",
        "queues.q.default_priority:",
        "queues.q.retry_backoff.initial:",
        "queues.q.retry_backoff.multiplier:",
        "queues.q.retry_backoff.jitter:",
        "routes[0].kind:",
        "routes[0].queue:",
        "routes[0].priority:",
    ] {
        assert!(errors.iter().any(|e| e.starts_with(expected)), "missing {expected:?} in {errors:#?}");
    }
}

#[test]
fn queue_names() {
    assert!(valid_queue_name("a.b_c:d-1"));
    assert!(!valid_queue_name(""));
    assert!(!valid_queue_name("has space"));
    assert!(!valid_queue_name(&"x".repeat(129)));
}

#[test]
fn redis_cluster_takes_a_list_of_node_urls() {
    let cluster = Config::from_toml(
        "storage = \"redis\"\nredis_cluster = true\nredis_url = \"redis://10.0.0.1:6379, rediss://u:p@10.0.0.2:6379\"",
    )
    .unwrap();
    cluster.validate().unwrap();
    assert_eq!(
        cluster.redis_target(),
        Target::Cluster(vec!["redis://10.0.0.1:6379".into(), "rediss://u:p@10.0.0.2:6379".into()])
    );
    for bad in ["redis://a:1,http://b:2", ",", ""] {
        let text = format!("storage = \"redis\"\nredis_cluster = true\nredis_url = {bad:?}");
        let errors = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(errors[0].starts_with("redis_url:"), "{bad:?}: {errors:?}");
    }
    // Without redis_cluster (or redis_sentinel) a comma is just part of one
    // (bad) URL's text: one target, which the Redis client then refuses.
    let text = "storage = \"redis\"\nredis_url = \"redis://a:1,redis://b:2\"";
    let single = Config::from_toml(text).unwrap();
    assert_eq!(single.redis_target(), Target::Single("redis://a:1,redis://b:2".into()));
    assert_eq!(single.redis_target().urls(), ["redis://a:1,redis://b:2"]);
}

#[test]
fn redis_sentinel_names_the_master_and_redis_url_the_sentinels() {
    let text =
        "storage = \"redis\"\nredis_sentinel = \"tb\"\nredis_url = \"redis://s1:26379,redis://s2:26379\"";
    let config = Config::from_toml(text).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.redis_target(),
        Target::Sentinel {
            sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
            master: "tb".into()
        }
    );
    let both = Config::from_toml(&format!("{text}\nredis_cluster = true")).unwrap();
    let errors = both.validate().unwrap_err();
    assert!(errors.iter().any(|e| e.starts_with("redis_sentinel:")), "{errors:?}");
}

#[test]
fn max_delay_defaults_to_366_days_and_is_bounded() {
    assert_eq!(Config::default().max_delay, Duration::from_secs(366 * 24 * 3600));
    assert_eq!(Config::from_toml(EXAMPLE).unwrap().max_delay, Config::default().max_delay);
    assert_eq!(Config::from_toml("max_delay = \"1h\"").unwrap().max_delay, Duration::from_secs(3600));
    for bad in ["0s", "101years"] {
        let errors = Config::from_toml(&format!("max_delay = {bad:?}")).unwrap().validate().unwrap_err();
        assert!(errors[0].starts_with("max_delay:"), "{bad}: {errors:?}");
    }
}

#[test]
fn a_url_with_a_password_in_the_wrong_setting_is_not_echoed_with_its_password() {
    let text = "listen = \"redis://:pw@h:1\"\n[queues.\"redis://u:pw@h\"]\n[[routes]]\nkind = \"k\"\nqueue = \"rediss://:pw@h\"\n";
    let errors = Config::from_toml(text).unwrap().validate().unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    for e in errors {
        assert!(!e.contains("pw"), "{e}");
    }
}

#[test]
fn admin_listen_defaults_to_port_9090_and_empty_turns_it_off() {
    let config = Config::default();
    assert_eq!(config.admin_listen, DEFAULT_ADMIN_LISTEN);
    assert_eq!(config.admin_addr(), Some("127.0.0.1:9090".parse().unwrap()));
    let off = Config::from_toml("admin_listen = \"\"").unwrap();
    assert!(off.validate().is_ok());
    assert_eq!(off.admin_addr(), None);
    let bad = Config::from_toml("admin_listen = \"localhost\"").unwrap();
    let errors = bad.validate().unwrap_err();
    assert!(errors[0].starts_with("admin_listen: \"localhost\" is not an address"), "{errors:?}");
}

#[test]
fn flow_control_settings_resolve_and_inherit() {
    let config = Config::from_toml(
        r#"
        [semaphores.selenium]
        limit = 5
        [queues.default]
        rate_burst = 3
        [queues.browsers]
        max_in_flight = 10
        per_key_max_in_flight = 2
        rate_limit = "120/m"
        semaphores = ["selenium"]
        [queues.fast]
        rate_limit = "50/s"
        [[routes]]
        kind = "browse.*"
        queue = "browsers"
        semaphores = ["selenium"]
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let p = config.policies();
    let b = p.get("browsers");
    assert_eq!((b.max_in_flight, b.per_key_max_in_flight), (10, 2));
    let rate = b.rate_limit.unwrap();
    assert_eq!((rate.rate.to_string(), rate.burst), ("120/m".to_owned(), 3), "burst inherited");
    assert_eq!(b.semaphores, ["selenium"]);
    assert_eq!(p.get("fast").rate_limit.unwrap().burst, 3);
    assert_eq!(p.get("other").rate_limit, None);
    assert_eq!(p.semaphore_limit("selenium"), Some(5));
    assert_eq!(config.routes()[0].semaphores, ["selenium"]);
}

#[test]
fn bad_flow_control_settings_are_named_with_their_path() {
    let config = Config::from_toml(
        r#"
        [semaphores.zero]
        limit = 0
        [queues.a]
        rate_limit = "fast"
        semaphores = ["nope"]
        [queues.b]
        rate_burst = 0
        [[routes]]
        kind = "x"
        queue = "a"
        semaphores = ["missing"]
        "#,
    )
    .unwrap();
    let errors = config.validate().unwrap_err().join("\n");
    for needle in [
        "semaphores.zero.limit: must be >= 1",
        "queues.a.rate_limit: \"fast\" is not a rate",
        "queues.a.semaphores: \"nope\" is not declared",
        "queues.b.rate_burst: must be >= 1",
        "routes[0].semaphores: \"missing\" is not declared",
    ] {
        assert!(errors.contains(needle), "{needle:?} not in\n{errors}");
    }
}

#[test]
fn telemetry_settings_stand_in_for_unset_otel_variables() {
    let config = Config::from_toml(
        "[telemetry]\notlp_endpoint = \"http://collector:4317\"\nservice_name = \"jobs\"\nsample_ratio = 0.25\n",
    )
    .unwrap();
    config.validate().unwrap();
    let none = |_: &str| None;
    assert_eq!(
        config.telemetry.env_defaults(none),
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317".to_string()),
            ("OTEL_SERVICE_NAME", "jobs".to_string()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_string()),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25".to_string()),
        ]
    );
    let set = |name: &str| (name == "OTEL_SERVICE_NAME").then(|| "from-env".to_string());
    assert!(
        !config.telemetry.env_defaults(set).iter().any(|(k, _)| *k == "OTEL_SERVICE_NAME"),
        "the variable wins"
    );
    let bad =
        Config::from_toml("[telemetry]\notlp_endpoint = \"collector:4317\"\nsample_ratio = 2.0\n").unwrap();
    assert_eq!(bad.validate().unwrap_err().len(), 2);
}

#[test]
fn security_settings_are_checked_with_their_paths() {
    let bad = Config::from_toml(
        r#"
tls_cert = "/nonexistent/cert.pem"
health_listen = "nowhere"
admin_tls = true
[auth]
enabled = true
[[auth.principals]]
name = "a"
token_sha256 = "abc"
mtls_subject = "CN=x"
grants = [ { actions = ["write"], queues = [] } ]
[[auth.principals]]
name = "a"
"#,
    )
    .unwrap();
    let errors = bad.validate().unwrap_err().join("\n");
    for needle in [
        "tls_cert, tls_key: give both or neither",
        "health_listen: \"nowhere\" is not an address",
        "auth.principals[0].token_sha256: must be 64 hex digits",
        "auth.principals[0]: mtls_subject and mtls_san need tls_client_ca",
        "auth.principals[0].grants[0].actions: \"write\" is not an action",
        "auth.principals[0].grants[0].queues: must not be empty",
        "auth.principals[1].name: \"a\" is declared twice",
    ] {
        assert!(errors.contains(needle), "{needle:?} not in\n{errors}");
    }
    let nobody = Config::from_toml("[auth]\nenabled = true\n").unwrap();
    assert!(nobody.validate().unwrap_err()[0].contains("no principal is declared"));
    let good = Config::from_toml(&format!(
        "[auth]\nenabled = true\n[[auth.principals]]\nname = \"api\"\ntoken_sha256 = \"{}\"\n\
         grants = [{{ actions = [\"enqueue\", \"inspect\"], queues = [\"billing.*\"] }}]\n",
        "ab".repeat(32)
    ))
    .unwrap();
    good.validate().unwrap();
    let p = good.auth.principals[0].principal();
    assert!(p.allows(crate::core::access::Action::Enqueue, "billing.eu"));
}
