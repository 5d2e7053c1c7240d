//! TLS and mTLS on the gRPC port with real certificates (rcgen): who gets
//! in, how a client certificate becomes a principal, certificate rotation
//! without dropping connections, the plaintext health port, HTTPS on the
//! admin port, and the CLI over TLS with a token.

mod common;

use std::time::{Duration, Instant};

use common::certs::{self, Ca};
use common::secure::{self, ClientTls, Clients};
use rustls::pki_types::pem::PemObject;
use taskbroker::pb;
use tonic::Code;

fn enqueue_req(queue: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest { queue: queue.into(), kind: "k".into(), ..Default::default() }
}

/// A TLS config section for `dir`'s files (server cert from `ca`).
fn tls_toml(dir: &std::path::Path, ca: &Ca) -> String {
    let server = ca.server();
    let cert = certs::write(dir, "server.pem", &server.cert_pem);
    let key = certs::write(dir, "server.key", &server.key_pem);
    format!("tls_cert = {:?}\ntls_key = {:?}\n", cert, key)
}

#[tokio::test]
async fn a_tls_port_serves_tls_clients_and_refuses_plaintext_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let running = secure::start(&tls_toml(dir.path(), &ca)).await;
    let tls = ClientTls { ca_pem: Some(ca.pem.clone()), identity: None };
    let mut c = Clients::new(secure::connect(running.addr, Some(&tls)).await.unwrap(), None);
    c.producer.enqueue(enqueue_req("q")).await.expect("a TLS client is served");

    // Plaintext HTTP/2 against the TLS port: no call gets through.
    let plain = match secure::connect(running.addr, None).await {
        Err(_) => None,
        Ok(channel) => Some(Clients::new(channel, None).producer.enqueue(enqueue_req("q")).await),
    };
    assert!(!matches!(plain, Some(Ok(_))), "a plaintext client must not be served: {plain:?}");

    // A client that does not trust the server's CA is refused by its own check.
    let stranger = ClientTls { ca_pem: Some(Ca::new("other CA").pem), identity: None };
    assert!(secure::connect(running.addr, Some(&stranger)).await.is_err());
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn mtls_requires_a_verified_client_certificate_and_maps_it_to_a_principal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = certs::write(dir.path(), "clients-ca.pem", &ca.pem);
    let toml = format!(
        "{}tls_client_ca = {:?}\n\
         [auth]\nenabled = true\n\
         [[auth.principals]]\nname = \"selenium-workers\"\nmtls_subject = \"CN=selenium-worker\"\n\
         grants = [{{ actions = [\"enqueue\", \"consume\"], queues = [\"selenium\"] }}]\n\
         [[auth.principals]]\nname = \"spiffe\"\nmtls_san = \"spiffe://example.org/ns/jobs/sa/worker\"\n\
         grants = [{{ actions = [\"enqueue\"], queues = [\"*\"] }}]\n",
        tls_toml(dir.path(), &ca),
        ca_file
    );
    let running = secure::start(&toml).await;
    let with = |cert: Option<common::certs::Issued>| ClientTls {
        ca_pem: Some(ca.pem.clone()),
        identity: cert.map(|c| (c.cert_pem, c.key_pem)),
    };

    // No client certificate: the handshake (or the first call) fails.
    let none = match secure::connect(running.addr, Some(&with(None))).await {
        Err(_) => None,
        Ok(ch) => Some(Clients::new(ch, None).producer.enqueue(enqueue_req("selenium")).await),
    };
    assert!(!matches!(none, Some(Ok(_))), "no certificate must not be served: {none:?}");

    // By subject: allowed on its queue, denied elsewhere.
    let ch =
        secure::connect(running.addr, Some(&with(Some(ca.client("selenium-worker", &[]))))).await.unwrap();
    let mut c = Clients::new(ch, None);
    c.producer.enqueue(enqueue_req("selenium")).await.expect("granted by subject");
    let denied = c.producer.enqueue(enqueue_req("billing")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // By SAN.
    let spiffe = ca.client("anything", &["spiffe://example.org/ns/jobs/sa/worker"]);
    let ch = secure::connect(running.addr, Some(&with(Some(spiffe)))).await.unwrap();
    Clients::new(ch, None).producer.enqueue(enqueue_req("billing")).await.expect("granted by SAN");

    // Verified but unknown: UNAUTHENTICATED.
    let ch = secure::connect(running.addr, Some(&with(Some(ca.client("stranger", &[]))))).await.unwrap();
    let status = Clients::new(ch, None).producer.enqueue(enqueue_req("selenium")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Signed by another CA: refused in the handshake.
    let other = Ca::new("other CA").client("selenium-worker", &[]);
    let forged = match secure::connect(running.addr, Some(&with(Some(other)))).await {
        Err(_) => None,
        Ok(ch) => Some(Clients::new(ch, None).producer.enqueue(enqueue_req("selenium")).await),
    };
    assert!(!matches!(forged, Some(Ok(_))), "a certificate of another CA must not be served");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_while_open_ones_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let running = secure::start(&tls_toml(dir.path(), &old_ca)).await;
    let trusts = |ca: &Ca| ClientTls { ca_pem: Some(ca.pem.clone()), identity: None };
    let mut open = Clients::new(secure::connect(running.addr, Some(&trusts(&old_ca))).await.unwrap(), None);
    open.producer.enqueue(enqueue_req("q")).await.unwrap();

    // cert-manager writes the new pair in place.
    let next = new_ca.server();
    // The key first would pair a new key with the old certificate for a
    // moment; the broker keeps the old pair until both are consistent.
    certs::write(dir.path(), "server.key", &next.key_pem);
    certs::write(dir.path(), "server.pem", &next.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if secure::connect(running.addr, Some(&trusts(&new_ca))).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        secure::connect(running.addr, Some(&trusts(&old_ca))).await.is_err(),
        "new connections get the new certificate"
    );
    open.producer.enqueue(enqueue_req("q")).await.expect("the open connection carries on");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_health_port_answers_in_plaintext_and_serves_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let toml = format!("{}health_listen = \"127.0.0.1:0\"\n[auth]\nenabled = true\n[[auth.principals]]\nname = \"p\"\ntoken_sha256 = \"{}\"\n", tls_toml(dir.path(), &ca), "0".repeat(64));
    let running = secure::start(&toml).await;
    let health_addr = running.health_addr.expect("health_listen serves");
    let channel = secure::connect(health_addr, None).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let other = Clients::new(channel, None).producer.enqueue(enqueue_req("q")).await.unwrap_err();
    assert_eq!(other.code(), Code::Unimplemented, "only health is served there");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_admin_port_speaks_https_with_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let running = secure::start(&format!("{}admin_tls = true\n", tls_toml(dir.path(), &ca))).await;
    let admin = running.admin_addr.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("HTTPS handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(admin).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP must not be served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_cli_speaks_tls_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = certs::write(dir.path(), "ca.pem", &ca.pem);
    let token = "tbk_cli-test-token";
    let hash = taskbroker::security::authn::hex(&taskbroker::security::authn::token_hash(token));
    let toml = format!(
        "{}[auth]\nenabled = true\n[[auth.principals]]\nname = \"cli\"\ntoken_sha256 = \"{hash}\"\n\
         grants = [{{ actions = [\"enqueue\", \"inspect\"], queues = [\"jobs\"] }}]\n",
        tls_toml(dir.path(), &ca)
    );
    let running = secure::start(&toml).await;
    let server = format!("https://127.0.0.1:{}", running.addr.port());
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_taskbroker")).args(args).output().unwrap()
    };
    let base = |cmd: &str| {
        vec![
            cmd.to_string(),
            "--server".into(),
            server.clone(),
            "--tls-ca".into(),
            ca_file.display().to_string(),
        ]
    };
    let mut enqueue = base("enqueue");
    enqueue.extend([
        "--queue".into(),
        "jobs".into(),
        "--kind".into(),
        "k".into(),
        "--token".into(),
        token.into(),
    ]);
    let out = tokio::task::spawn_blocking(move || run(enqueue)).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut no_token = base("queues");
    no_token.push("--json".into());
    let out = tokio::task::spawn_blocking(move || run(no_token)).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    running.shutdown().await.unwrap();
}
