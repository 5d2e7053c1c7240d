//! The admin port with authentication on: the dashboard asks for a token
//! and shows only what it may inspect, its buttons need `admin`, and
//! `/metrics` needs a token that may inspect every queue.

mod common;

use common::http;
use common::secure;
use taskbroker::pb;
use taskbroker::security::authn::{hex, token_hash};

fn config() -> String {
    let principal = |name: &str, token: &str, grants: &str| {
        format!(
            "[[auth.principals]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\ngrants = [{grants}]\n",
            hex(&token_hash(token))
        )
    };
    format!(
        "[auth]\nenabled = true\n{}{}{}",
        principal("root", "t-root", r#"{ actions = ["enqueue", "inspect", "admin"], queues = ["*"] }"#),
        principal("viewer", "t-viewer", r#"{ actions = ["inspect"], queues = ["mine"] }"#),
        principal("operator", "t-operator", r#"{ actions = ["inspect", "admin"], queues = ["mine"] }"#),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn pages_need_a_token_and_show_only_the_queues_it_may_inspect() {
    let running = secure::start(&config()).await;
    let admin = running.admin_addr.unwrap();
    let mut root = secure::Clients::new(secure::connect(running.addr, None).await.unwrap(), Some("t-root"));
    for q in ["mine", "theirs"] {
        root.producer
            .enqueue(pb::EnqueueRequest { queue: q.into(), kind: "k".into(), ..Default::default() })
            .await
            .unwrap();
    }

    assert_eq!(http::get(admin, "/healthz").await.status, 200, "health stays open");
    let anonymous = http::get(admin, "/").await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.header("location"), Some("/login"));

    let auth = bearer("t-viewer");
    let page = http::request(admin, "GET", "/", &[("Authorization", &auth)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/queues/mine"), "its queue is listed");
    assert!(!page.body.contains("theirs"), "another queue is not even named");
    let other = http::request(admin, "GET", "/queues/theirs", &[("Authorization", &auth)], "").await;
    assert_eq!(other.status, 403);

    // A browser signs in with the form; the cookie then carries the token.
    let form_page = http::get(admin, "/login").await;
    assert_eq!(form_page.status, 200);
    let csrf =
        form_page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let origin = format!("http://{admin}");
    let wrong =
        http::post_form(admin, "/login", &[("Origin", &origin)], &format!("csrf={csrf}&token=nope")).await;
    assert_eq!(wrong.status, 401);
    let signed =
        http::post_form(admin, "/login", &[("Origin", &origin)], &format!("csrf={csrf}&token=t-viewer"))
            .await;
    assert_eq!(signed.status, 303);
    let cookie = signed.header("set-cookie").expect("a cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let page = http::request(admin, "GET", "/", &[("Cookie", &pair)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/queues/mine"));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn buttons_need_the_admin_grant_on_their_queue() {
    let running = secure::start(&config()).await;
    let admin = running.admin_addr.unwrap();
    let mut root = secure::Clients::new(secure::connect(running.addr, None).await.unwrap(), Some("t-root"));
    root.producer
        .enqueue(pb::EnqueueRequest { queue: "mine".into(), kind: "k".into(), ..Default::default() })
        .await
        .unwrap();
    let origin = format!("http://{admin}");
    let csrf = |body: &str| {
        body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    for (token, expected) in [("t-viewer", 403), ("t-operator", 303)] {
        let auth = bearer(token);
        let page = http::request(admin, "GET", "/queues/mine", &[("Authorization", &auth)], "").await;
        assert_eq!(page.status, 200);
        let form = format!("csrf={}", csrf(&page.body));
        let r = http::post_form(
            admin,
            "/queues/mine/pause",
            &[("Origin", &origin), ("Authorization", &auth)],
            &form,
        )
        .await;
        assert_eq!(r.status, expected, "{token}");
    }
    let info = root.admin.get_queue(pb::GetQueueRequest { queue: "mine".into() }).await.unwrap().into_inner();
    assert!(info.paused, "the operator's pause went through");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_need_a_token_that_may_inspect_every_queue() {
    let running = secure::start(&config()).await;
    let admin = running.admin_addr.unwrap();
    let none = http::get(admin, "/metrics").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let partial =
        http::request(admin, "GET", "/metrics", &[("Authorization", &bearer("t-viewer"))], "").await;
    assert_eq!(partial.status, 403);
    let full = http::request(admin, "GET", "/metrics", &[("Authorization", &bearer("t-root"))], "").await;
    assert_eq!(full.status, 200);
    assert!(full.body.contains("taskbroker_grpc_requests_total") || full.body.contains("# EOF"));
    running.shutdown().await.unwrap();

    // protect_metrics = false: a scraper without a token is served.
    let open = secure::start(
        &config().replace("[auth]\nenabled = true\n", "[auth]\nenabled = true\nprotect_metrics = false\n"),
    )
    .await;
    assert_eq!(http::get(open.admin_addr.unwrap(), "/metrics").await.status, 200);
    open.shutdown().await.unwrap();
}
