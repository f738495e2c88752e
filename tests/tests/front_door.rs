//! Issue 2: the mutual-TLS front door, observed by a real rustls client.

use bytes::Bytes;
use http_body_util::Full;
use kakehashi_certs::{ClientCertRequest, Role};
use kakehashi_e2e::{admin_get, Client, Identity, TestGateway, CLINIC, HUB, OUTSIDER};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_outcome(r: &kakehashi_e2e::Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(v["issue"][0]["code"], code, "{v}");
}

#[tokio::test]
async fn valid_certificate_gets_capability_statement_over_h1_and_h2() {
    let gw = TestGateway::start().await;
    let id = gw.issue("clinic", CLINIC, Role::ClinicTerminal);
    let r = gw.client(Some(&id)).get(gw.addr, "/fhir/metadata").await.unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["resourceType"], "CapabilityStatement");
    assert_eq!(v["fhirVersion"], "4.0.1");
    assert_eq!(v["rest"][0]["security"]["service"][0]["coding"][0]["code"], "Certificates");
    // Truthful: every handler is declared, with its interactions.
    let declared = |ty: &str| -> Vec<String> {
        v["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == ty)
            .flat_map(|r| {
                r["interaction"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["code"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(declared("Consent"), ["read", "search-type", "create", "delete"]);
    assert_eq!(declared("AuditEvent"), ["search-type"]);
    assert_eq!(declared("Linkage"), ["search-type", "create"]);
    assert_eq!(declared("MedicationRequest"), ["read", "search-type"]);
    // Checked by the independent validator with the conformance output (scripts/test).
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-out/front-door");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("capability-statement.json"), &r.body).unwrap();

    let h2 = Client::new(&gw.pki.ca_cert_path(), Some(&id), &[b"h2", b"http/1.1"], None);
    let r = h2.get(gw.addr, "/fhir/metadata").await.unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn tls12_and_session_resumption_work() {
    let gw = TestGateway::start().await;
    let id = gw.issue("clinic", CLINIC, Role::ClinicTerminal);
    for versions in [&[&rustls::version::TLS12][..], &[&rustls::version::TLS13][..]] {
        let c = Client::new(&gw.pki.ca_cert_path(), Some(&id), &[b"http/1.1"], Some(versions));
        let first = c.get(gw.addr, "/fhir/metadata").await.unwrap();
        assert_eq!(first.status, 200);
        assert!(!first.resumed);
        let second = c.get(gw.addr, "/fhir/metadata").await.unwrap();
        assert_eq!(second.status, 200);
        assert!(second.resumed, "second connection should resume the session ({versions:?})");
    }
    gw.stop().await;
}

#[tokio::test]
async fn handshake_refusals() {
    let gw = TestGateway::start().await;
    let ca = gw.pki.ca_cert_path();

    // No certificate at all.
    let err = Client::new(&ca, None, &[b"http/1.1"], None).get(gw.addr, "/fhir/metadata").await.unwrap_err();
    assert!(!err.is_empty());

    // Another CA's certificate.
    let foreign = gw
        .pki
        .issue_from_foreign_ca(&ClientCertRequest::new(CLINIC, "x", Role::ClinicTerminal, "s1"), "stranger")
        .unwrap();
    let stranger = Identity::from_pem(&foreign.cert_pem, &foreign.key_pem);
    assert!(gw.client(Some(&stranger)).get(gw.addr, "/fhir/metadata").await.is_err());

    // Expired.
    let mut req = ClientCertRequest::new(CLINIC, "x", Role::ClinicTerminal, "old");
    let now = time::OffsetDateTime::now_utc();
    req.not_before = Some(now - time::Duration::days(30));
    req.not_after = Some(now - time::Duration::days(1));
    let old = gw.pki.issue(&req, "expired").unwrap();
    let expired = Identity::from_pem(&old.cert_pem, &old.key_pem);
    assert!(gw.client(Some(&expired)).get(gw.addr, "/fhir/metadata").await.is_err());

    // Both TLS versions refuse, not only 1.3.
    let tls12 = Client::new(&ca, Some(&stranger), &[b"http/1.1"], Some(&[&rustls::version::TLS12]));
    assert!(tls12.get(gw.addr, "/fhir/metadata").await.is_err());

    // A good certificate still works afterwards; the refusals were counted.
    let good = gw.issue("good", CLINIC, Role::ClinicTerminal);
    assert_eq!(gw.client(Some(&good)).get(gw.addr, "/fhir/metadata").await.unwrap().status, 200);
    let metrics = admin_get(gw.admin, "/metrics").await;
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kakehashi_tls_handshakes_failed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(failed >= 4, "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn certificate_revoked_while_running_is_refused_without_restart() {
    let gw = TestGateway::start().await;
    let id = gw.issue("soon-revoked", CLINIC, Role::ClinicTerminal);
    // One client with a session cache: after revocation it will try to resume.
    let client = gw.client(Some(&id));
    assert_eq!(client.get(gw.addr, "/fhir/metadata").await.unwrap().status, 200);
    gw.pki.revoke("soon-revoked").unwrap();
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if client.get(gw.addr, "/fhir/metadata").await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "revoked certificate still accepted after 10 s");
    // Others are unaffected by the reload.
    let other = gw.issue("other", CLINIC, Role::ClinicTerminal);
    assert_eq!(gw.client(Some(&other)).get(gw.addr, "/fhir/metadata").await.unwrap().status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn identity_refusals_are_403_outcomes() {
    let gw = TestGateway::start().await;
    // Chains to the federation CA but its institution is not a member.
    let outsider = gw.issue("outsider", OUTSIDER, Role::ClinicTerminal);
    let r = gw.client(Some(&outsider)).get(gw.addr, "/fhir/metadata").await.unwrap();
    assert_outcome(&r, 403, "forbidden");
    assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains(OUTSIDER));

    // Chains correctly but carries none of the profile's URIs.
    let pki_dir = gw.pki.dir();
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["bare.example".to_string()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let bare = p.signed_by(&key, &issuer).unwrap();
    let bare = Identity::from_pem(&bare.pem(), &key.serialize_pem());
    let r = gw.client(Some(&bare)).get(gw.addr, "/fhir/metadata").await;
    // webpki needs the serial in CRL scope; a bare cert from our CA is still accepted by TLS.
    let r = r.unwrap();
    assert_outcome(&r, 403, "forbidden");
    assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("institution URI"));
    gw.stop().await;
}

#[tokio::test]
async fn front_door_errors_are_operation_outcomes() {
    let gw = TestGateway::start().await;
    let id = gw.issue("hub", HUB, Role::HospitalSystem);
    let c = gw.client(Some(&id));
    assert_outcome(&c.get(gw.addr, "/fhir/NoSuchThing").await.unwrap(), 404, "not-found");
    assert_outcome(&c.get(gw.addr, "/elsewhere").await.unwrap(), 404, "not-found");
    let del = http::Request::delete("/fhir/metadata").body(Full::new(Bytes::new())).unwrap();
    let r = c.send(gw.addr, del).await.unwrap();
    assert_outcome(&r, 405, "not-supported");
    assert!(r.headers.contains_key("allow"));
    let xml = http::Request::get("/fhir/metadata")
        .header("accept", "application/fhir+xml")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_outcome(&c.send(gw.addr, xml).await.unwrap(), 406, "not-supported");
    let post = http::Request::post("/fhir/metadata")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from("hi")))
        .unwrap();
    assert_outcome(&c.send(gw.addr, post).await.unwrap(), 415, "not-supported");
    let get_body = http::Request::get("/fhir/metadata").body(Full::new(Bytes::from("{}"))).unwrap();
    assert_outcome(&c.send(gw.addr, get_body).await.unwrap(), 400, "invalid");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_headers_malformed_http_and_slow_clients_are_bounded() {
    let gw = TestGateway::start_with("header_read_timeout_secs = 1\nmax_header_bytes = 8192").await;
    let id = gw.issue("hub", HUB, Role::HospitalSystem);
    let c = gw.client(Some(&id));

    let big = http::Request::get("/fhir/metadata")
        .header("x-big", "a".repeat(64 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // A closed connection is also acceptable.
    if let Ok(r) = c.send(gw.addr, big).await {
        assert_eq!(r.status, 431);
    }

    // Malformed request line.
    let mut tls = c.connect(gw.addr).await.unwrap();
    tls.write_all(b"GARBAGE \x01\x02 NOT-HTTP\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await.expect("server closes");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");

    // Slow client: headers never finish; the server closes within the timeout.
    let mut tls = c.connect(gw.addr).await.unwrap();
    tls.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await.expect("closed by server").ok();
    assert!(started.elapsed() < Duration::from_secs(9));

    // Still healthy.
    assert_eq!(c.get(gw.addr, "/fhir/metadata").await.unwrap().status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn admin_listener_serves_health_and_metrics() {
    let gw = TestGateway::start().await;
    assert!(gw.admin.ip().is_loopback());
    assert_eq!(admin_get(gw.admin, "/healthz").await.trim(), "ok");
    assert!(admin_get(gw.admin, "/metrics").await.contains("kakehashi_http_responses_total"));
    // An audited search shows in the audit writer's group-commit counters.
    let id = gw.issue("metrics", CLINIC, Role::ClinicTerminal);
    assert_eq!(gw.client(Some(&id)).get(gw.addr, "/fhir/Patient?identifier=A-0101").await.unwrap().status, 200);
    let metrics = admin_get(gw.admin, "/metrics").await;
    let counter = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    };
    assert!(counter("kakehashi_audit_events_total") >= 1.0, "{metrics}");
    assert!(counter("kakehashi_audit_commits_total") >= 1.0, "{metrics}");
    assert!(counter("kakehashi_audit_commit_seconds_total") > 0.0, "{metrics}");
    gw.stop().await;
}
