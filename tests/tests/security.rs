//! Issue 19: each break an outside probe found in the demo, as the test that would have
//! caught it (the audit chain's own tamper cases are in `audit_witness.rs`).

use bytes::Bytes;
use http_body_util::Full;
use kakehashi_certs::Role;
use kakehashi_e2e::{
    backend_is_postgres, Client, Identity, Options, TestGateway, AUDIT_BODY, CLINIC, CLINIC_B, HUB, PHARMACY,
};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The id of the hub's patient with local id `local`, as the hub sees it.
async fn hub_patient(gw: &TestGateway, local: &str) -> String {
    let hub = gw.client(Some(&gw.issue(&format!("hub-{local}"), HUB, Role::HospitalSystem)));
    hub.first_id(gw.addr, &format!("/fhir/Patient?identifier={local}")).await
}

fn with_header(path: &str, name: &str, value: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path).header(name, value).body(Full::new(Bytes::new())).unwrap()
}

/// Stored audit events whose entry contains `needle`, newest first: (outcome, entry).
async fn events_with(gw: &TestGateway, needle: &str) -> Vec<(String, String)> {
    let pool = gw.db().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT outcome, event FROM audit_event WHERE event LIKE $1 ORDER BY seq DESC")
            .bind(format!("%{needle}%"))
            .fetch_all(&pool)
            .await
            .unwrap();
    rows
}

/// `/metrics` of the admin listener.
async fn metrics(gw: &TestGateway) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Wait up to `secs` for `f` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(secs: u64, mut f: impl FnMut() -> F) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_pharmacy_presents_only_the_printed_prescription_number() {
    let gw = TestGateway::start().await;
    let rx = gw.client(Some(&gw.issue("rx", PHARMACY, Role::Pharmacy)));
    let total = |q: String| {
        let rx = rx.clone();
        let addr = gw.addr;
        async move { rx.get(addr, &format!("/fhir/MedicationRequest?{q}")).await.unwrap().json()["total"].clone() }
    };
    let birth = "patient.birthdate=1952-03-14";
    // The number printed on the prescription finds it, bare or with its system.
    assert_eq!(total(format!("identifier=000000000001000&{birth}")).await, 2);
    let system = format!("urn:kakehashi:local:{HUB}:prescription-number");
    assert_eq!(total(format!("identifier={system}|000000000001000&{birth}")).await, 2);
    // Every other identifier a prescription carries finds nothing: the RP-group number
    // (1, 2, ... on every prescription), the order identifier, a wrong system.
    for other in [
        "1".to_string(),
        "2".to_string(),
        format!("urn:oid:1.2.392.100495.20.3.11|{HUB}-1000001-000000000001000"),
        format!("{HUB}-1000001-000000000001000"),
        "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber|1".to_string(),
        "urn:x|000000000001000".to_string(),
    ] {
        assert_eq!(total(format!("identifier={other}&{birth}")).await, 0, "{other}");
    }
    // Failed lookups are audited as such, so that a sweep shows.
    let failed = events_with(&gw, "presented prescription: no prescription matches").await;
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(failed.iter().all(|(outcome, e)| outcome == "not-found" && e.contains(PHARMACY)));
    gw.stop().await;
}

#[tokio::test]
async fn presented_prescription_lookups_are_rate_limited_per_certificate() {
    let gw = TestGateway::start_opts(Options {
        policy_extra: "prescription_lookups_per_minute = 3".into(),
        ..Default::default()
    })
    .await;
    let rx = gw.client(Some(&gw.issue("rx", PHARMACY, Role::Pharmacy)));
    let q = "/fhir/MedicationRequest?identifier=RX-SWEEP-{n}&patient.birthdate=1952-03-14";
    for n in 0..3 {
        assert_eq!(rx.get(gw.addr, &q.replace("{n}", &n.to_string())).await.unwrap().status, 200);
    }
    let limited = rx.get(gw.addr, &q.replace("{n}", "3")).await.unwrap();
    assert_eq!(limited.status, 429);
    assert!(limited.headers.contains_key("retry-after"));
    let oo = limited.json();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "throttled");
    // Another pharmacy's certificate has its own allowance; searches by grant are not lookups.
    let rx2 = gw.client(Some(&gw.issue("rx2", PHARMACY, Role::Pharmacy)));
    assert_eq!(rx2.get(gw.addr, &q.replace("{n}", "9")).await.unwrap().status, 200);
    assert_eq!(rx.get(gw.addr, "/fhir/MedicationRequest").await.unwrap().status, 200);
    let refused = events_with(&gw, "presented-prescription lookups are limited").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, "4");
    gw.stop().await;
}

/// Open a keep-alive connection with `id` (HTTP/2 when `h2`) and show it serves.
async fn open(gw: &TestGateway, id: &Identity, h2: bool) -> kakehashi_e2e::KeepAlive {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let client = Client::new(&gw.pki.ca_cert_path(), Some(id), alpn, None);
    let mut conn = client.keep_alive(gw.addr).await.unwrap();
    assert_eq!(conn.get("/fhir/metadata").await.unwrap().status, 200);
    assert!(matches!((h2, &conn), (true, kakehashi_e2e::KeepAlive::H2(_)) | (false, kakehashi_e2e::KeepAlive::H1(_))));
    conn
}

/// Keep using `conn` until it stops serving; false if it still serves after `secs`.
async fn stops_serving(conn: &mut kakehashi_e2e::KeepAlive, secs: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        match conn.get("/fhir/metadata").await {
            Ok(r) if r.status == 200 => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(r) => {
                assert_eq!(r.status, 403, "a refusal, never anything else");
                return true;
            }
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn revocation_reaches_open_http1_and_http2_connections() {
    let gw = TestGateway::start().await;
    let lost = gw.issue("lost-terminal", CLINIC, Role::ClinicTerminal);
    let kept = gw.issue("kept-terminal", CLINIC, Role::ClinicTerminal);
    let mut h1 = open(&gw, &lost, false).await;
    let mut h2 = open(&gw, &lost, true).await;
    let mut other = open(&gw, &kept, false).await;
    gw.pki.revoke("lost-terminal").unwrap();
    assert!(stops_serving(&mut h1, 5).await, "the HTTP/1.1 keep-alive connection went on serving");
    assert!(stops_serving(&mut h2, 5).await, "the HTTP/2 connection went on serving");
    // Once refused, never served again on either; new connections are refused in the
    // handshake; other certificates' connections are untouched.
    assert!(h1.get("/fhir/metadata").await.map_or(true, |r| r.status == 403));
    assert!(h2.get("/fhir/metadata").await.map_or(true, |r| r.status == 403));
    let fresh = gw.client(Some(&lost));
    assert!(fresh.get(gw.addr, "/fhir/metadata").await.is_err());
    assert_eq!(other.get("/fhir/metadata").await.unwrap().status, 200);
    let m = metrics(&gw).await;
    let closed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("kakehashi_connections_closed_revoked_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(closed >= 1, "{m}");
    gw.stop().await;
}

/// Sign and install a CRL (no revocations) whose `nextUpdate` is `secs` from now.
fn install_short_crl(gw: &TestGateway, secs: i64) {
    let dir = gw.dir.path().join("pki");
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::seconds(secs),
        crl_number: rcgen::SerialNumber::from(1_000_000u64),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let tmp = dir.join("ca.crl.tmp");
    std::fs::write(&tmp, crl.pem().unwrap()).unwrap();
    std::fs::rename(tmp, dir.join("ca.crl")).unwrap();
}

#[tokio::test]
async fn a_lapsing_crl_closes_connections_opened_before_it_lapsed() {
    let gw = TestGateway::start().await;
    let id = gw.issue("terminal", CLINIC, Role::ClinicTerminal);
    install_short_crl(&gw, 4);
    tokio::time::sleep(Duration::from_millis(2200)).await; // reloaded (crl_check_secs = 1)
    let mut conn = open(&gw, &id, false).await;
    assert!(stops_serving(&mut conn, 8).await, "served after the CRL lapsed");
    assert!(gw.client(Some(&id)).get(gw.addr, "/fhir/metadata").await.is_err(), "new connections fail closed");
    gw.stop().await;
}

#[tokio::test]
async fn refused_handshakes_are_audited_per_certificate_and_reason() {
    let gw = TestGateway::start_with("refused_handshake_audit_secs = 1").await;
    let revoked = gw.issue("revoked", CLINIC, Role::ClinicTerminal);
    let serial = gw.pki.dir().join("index.json");
    gw.pki.revoke("revoked").unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..3 {
        assert!(gw.client(Some(&revoked)).get(gw.addr, "/fhir/metadata").await.is_err());
    }
    let stranger = {
        let req = kakehashi_certs::ClientCertRequest::new(CLINIC, "偽の診療所", Role::ClinicTerminal, "x");
        let issued = gw.pki.issue_from_foreign_ca(&req, "stranger").unwrap();
        Identity::from_pem(&issued.cert_pem, &issued.key_pem)
    };
    assert!(gw.client(Some(&stranger)).get(gw.addr, "/fhir/metadata").await.is_err());
    assert!(gw.client(None).get(gw.addr, "/fhir/metadata").await.is_err());
    let index: Value = serde_json::from_str(&std::fs::read_to_string(serial).unwrap()).unwrap();
    let serial = index["issued"]["revoked"]["serial"].as_str().unwrap().to_string();
    // Both kinds are written by the same aggregator, possibly in two commits.
    let found = eventually(5, || async {
        !events_with(&gw, "TLS handshake refused (revoked)").await.is_empty()
            && !events_with(&gw, "TLS handshake refused (unknown-ca)").await.is_empty()
    })
    .await;
    assert!(found, "the refused handshakes were not audited");
    let revoked_events = events_with(&gw, "TLS handshake refused (revoked)").await;
    assert_eq!(revoked_events.len(), 1, "aggregated: one event for three attempts");
    let (outcome, entry) = &revoked_events[0];
    assert_eq!(outcome, "4");
    assert!(entry.contains("3 attempt(s)") && entry.contains(&serial), "{entry}");
    assert!(entry.contains("\"subject\"") && entry.contains("\"issuer\"") && entry.contains("127.0.0.1"), "{entry}");
    // A certificate of another CA says what its maker wrote: it is attributed to no
    // institution (so it lands in no institution's audit view) and marked unverified.
    let foreign = events_with(&gw, "TLS handshake refused (unknown-ca)").await;
    assert_eq!(foreign.len(), 1);
    assert!(foreign[0].1.contains("(unverified)") && !foreign[0].1.contains("\"institution\""), "{}", foreign[0].1);
    let pool = gw.db().await;
    let agents: Vec<String> =
        sqlx::query_scalar("SELECT agent_institution FROM audit_event WHERE event LIKE '%unknown-ca%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(agents, [""], "not filed under the institution it claims");
    assert!(!events_with(&gw, "TLS handshake refused (no-certificate)").await.is_empty());
    let m = metrics(&gw).await;
    for reason in ["revoked", "unknown-ca", "no-certificate"] {
        assert!(m.contains(&format!("kakehashi_tls_handshakes_refused_total{{reason=\"{reason}\"}}")), "{m}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_certificate_without_the_client_auth_usage_is_refused() {
    let gw = TestGateway::start().await;
    let dir = gw.dir.path().join("pki");
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
    let make = |eku: Vec<rcgen::ExtendedKeyUsagePurpose>| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for uri in [
            format!("urn:kakehashi:institution:{CLINIC}"),
            "urn:kakehashi:role:clinic-terminal".into(),
            "urn:kakehashi:terminal:no-eku".into(),
        ] {
            p.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "Clinic");
        p.extended_key_usages = eku;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        Identity::from_pem(&cert.pem(), &key.serialize_pem())
    };
    // The same certificate with the clientAuth usage is accepted; without any extended
    // key usage, or with serverAuth only, it is refused in the handshake.
    let ok = make(vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
    assert_eq!(gw.client(Some(&ok)).get(gw.addr, "/fhir/metadata").await.unwrap().status, 200);
    for eku in [vec![], vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]] {
        let id = make(eku);
        assert!(gw.client(Some(&id)).get(gw.addr, "/fhir/metadata").await.is_err());
    }
    assert!(metrics(&gw).await.contains("kakehashi_tls_handshakes_refused_total{reason=\"not-client-auth\"} 2"));
    gw.stop().await;
}

#[tokio::test]
async fn a_refused_read_looks_like_an_absent_one_everywhere_the_reader_can_look() {
    let gw = TestGateway::start().await;
    let p = hub_patient(&gw, "1000001").await;
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let refused = clinic.get(gw.addr, &format!("/fhir/Patient/{p}")).await.unwrap();
    let absent_id = format!("patient-{}", "0".repeat(24));
    let absent = clinic.get(gw.addr, &format!("/fhir/Patient/{absent_id}")).await.unwrap();
    assert_eq!((refused.status, absent.status), (404, 404));
    let (r, a) = (refused.json(), absent.json());
    assert_eq!(r["issue"][0]["code"], a["issue"][0]["code"]);
    assert_eq!(
        r["issue"][0]["diagnostics"].as_str().unwrap().replace(&p, "ID"),
        a["issue"][0]["diagnostics"].as_str().unwrap().replace(&absent_id, "ID")
    );
    // Both are audited: the absent read too (id guessing leaves a trace).
    let absent_events = events_with(&gw, &absent_id).await;
    assert_eq!(absent_events.len(), 1);
    assert_eq!(absent_events[0].0, "not-found");
    let refused_events = events_with(&gw, &format!("Patient/{p}\",\"owner\":\"{HUB}\"")).await;
    assert!(refused_events.iter().any(|(o, _)| o == "4"), "{refused_events:?}");

    // The clinic's own auditor sees both the same way: what was asked, not whose it is.
    let own_auditor = gw.client(Some(&gw.issue("clinic-auditor", CLINIC, Role::Auditor)));
    let seen = own_auditor.get(gw.addr, &format!("/fhir/AuditEvent?agent={CLINIC}&subtype=read")).await.unwrap();
    assert_eq!(seen.status, 200);
    let events: Vec<Value> = seen.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .filter(|e| e["outcome"] == "4")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        let text = e.to_string();
        assert!(!text.contains(HUB), "the reader's auditor learns the owner: {text}");
        assert_eq!(e["outcomeDesc"], "not found, or not visible to this reader");
    }
    let by_patient = own_auditor.get(gw.addr, &format!("/fhir/AuditEvent?patient={p}")).await.unwrap().json();
    assert_eq!(by_patient["total"], 0, "the refused record's patient is not searchable by the reader's auditor");
    // The owner's auditor sees the refusal at its boundary, with owner and patient.
    let hub_auditor = gw.client(Some(&gw.issue("hub-auditor", HUB, Role::Auditor)));
    let at_hub =
        hub_auditor.get(gw.addr, &format!("/fhir/AuditEvent?patient={p}&agent={CLINIC}")).await.unwrap().json();
    assert_eq!(at_hub["total"], 1, "{at_hub}");
    assert!(at_hub["entry"][0]["resource"].to_string().contains(HUB));
    gw.stop().await;
}

#[tokio::test]
async fn handshakes_in_progress_are_limited_per_address() {
    let gw = TestGateway::start_with("max_handshakes_per_address = 2").await;
    // Two connections that never finish a handshake hold this address's places...
    let idle: Vec<tokio::net::TcpStream> =
        futures_join(vec![tokio::net::TcpStream::connect(gw.addr), tokio::net::TcpStream::connect(gw.addr)]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... so a third is closed at once rather than filling the gateway's limit.
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), tokio::io::AsyncReadExt::read(&mut third, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the third connection was not closed: {read:?}");
    assert!(metrics(&gw).await.contains("kakehashi_connections_refused_total{limit=\"address\"} 1"));
    drop(idle);
    let id = gw.issue("after", CLINIC, Role::ClinicTerminal);
    let ok = eventually(5, || async {
        gw.client(Some(&id)).get(gw.addr, "/fhir/metadata").await.is_ok_and(|r| r.status == 200)
    });
    assert!(ok.await, "places are given back when those connections go");
    gw.stop().await;
}

async fn futures_join(
    c: Vec<impl std::future::Future<Output = std::io::Result<tokio::net::TcpStream>>>,
) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for f in c {
        out.push(f.await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_oversized_body_gets_its_413_over_http2() {
    let gw = TestGateway::start_with("max_body_bytes = 1048576").await;
    let _ = gw.issue("hub", HUB, Role::HospitalSystem);
    let file = gw.dir.path().join("big.json");
    std::fs::write(&file, vec![b' '; 3 * 1024 * 1024]).unwrap();
    let pki = gw.dir.path().join("pki");
    for _ in 0..3 {
        let Ok(out) = tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "--http2", "--cacert"])
            .arg(pki.join("ca.pem"))
            .args(["--cert"])
            .arg(pki.join("hub.pem"))
            .args(["--key"])
            .arg(pki.join("hub.key"))
            .args(["-H", "content-type: application/fhir+json", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("https://localhost:{}/fhir", gw.addr.port()))
            .output()
            .await
        else {
            eprintln!("curl not installed; skipped");
            break;
        };
        assert!(out.status.success(), "curl exit {:?}", out.status.code());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    }
    gw.stop().await;
}

#[tokio::test]
async fn malformed_break_glass_declarations_are_audited() {
    let gw = TestGateway::start().await;
    let p = hub_patient(&gw, "1000001").await;
    let doctor = gw.client(Some(&gw.issue("oncall", CLINIC_B, Role::Doctor)));
    for bad in ["bogus", "other"] {
        let r = doctor
            .send(gw.addr, with_header(&format!("/fhir/Patient/{p}"), "kakehashi-break-glass", bad))
            .await
            .unwrap();
        assert_eq!(r.status, 400);
    }
    let logged = events_with(&gw, "invalid request").await;
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged.iter().all(|(o, e)| o == "invalid" && e.contains(CLINIC_B)));
    gw.stop().await;
}

const GLASS: &str = "emergency-treatment; 意識障害で搬送";

#[tokio::test]
async fn break_glass_reaches_one_patient_at_a_time_and_is_time_boxed() {
    let gw =
        TestGateway::start_opts(Options { policy_extra: "break_glass_max_patients = 1".into(), ..Default::default() })
            .await;
    let (p1, p2) = (hub_patient(&gw, "1000001").await, hub_patient(&gw, "1000002").await);
    let doctor = gw.client(Some(&gw.issue("oncall", CLINIC_B, Role::Doctor)));
    let bg = |path: &str, reason: &str| with_header(path, "kakehashi-break-glass", reason);
    // Across patients: refused even with the header (and audited).
    for path in ["/fhir/Patient?name=%E5%B3%B6", "/fhir/Observation", "/fhir/Patient", "/fhir/Condition?code=x"] {
        let r = doctor.send(gw.addr, bg(path, GLASS)).await.unwrap();
        assert_eq!(r.status, 403, "{path}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(events_with(&gw, "break-glass reads one patient at a time").await.len(), 4);
    // A reason must be a listed code; `other` needs text.
    for bad in ["急変", "other", "other;  ", "urgent; x"] {
        let r = doctor.send(gw.addr, bg(&format!("/fhir/Patient/{p1}"), bad)).await.unwrap();
        assert_eq!(r.status, 400, "{bad}");
    }
    // One patient: a read, a search with that patient, $everything.
    assert_eq!(doctor.send(gw.addr, bg(&format!("/fhir/Patient/{p1}"), GLASS)).await.unwrap().status, 200);
    let obs = doctor.send(gw.addr, bg(&format!("/fhir/Observation?patient={p1}"), GLASS)).await.unwrap().json();
    assert!(obs["total"].as_u64().unwrap() > 0, "{obs}");
    let all = doctor.send(gw.addr, bg(&format!("/fhir/Patient/{p1}/$everything"), "other; 災害時")).await.unwrap();
    assert_eq!(all.status, 200);
    // Without the header nothing; a second patient is beyond this terminal's limit of one.
    assert_eq!(doctor.get(gw.addr, &format!("/fhir/Patient/{p1}")).await.unwrap().status, 404);
    let second = doctor.send(gw.addr, bg(&format!("/fhir/Patient/{p2}"), GLASS)).await.unwrap();
    assert_eq!(second.status, 429, "{}", String::from_utf8_lossy(&second.body));
    // One person (24 h by default): the hub's record and, through $everything, the same
    // person's record at clinic A; one notice per owner, however many reads.
    let pool = gw.db().await;
    let rows: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT owner, person, opened_at, expires_at FROM break_glass ORDER BY owner")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), [HUB, CLINIC]);
    assert!(rows.iter().all(|r| r.1 == p1 && r.3 - r.2 == 24 * 3600), "{rows:?}");
    let notices: Vec<String> =
        sqlx::query_scalar("SELECT destination FROM outbox WHERE kind = 'break-glass' ORDER BY destination")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(notices, [HUB, CLINIC]);
    // Each use is audited with its reason.
    let uses = events_with(&gw, "ETREAT").await;
    assert_eq!(uses.len(), 3, "{uses:?}");
    assert!(uses.iter().any(|(_, e)| e.contains("other; 災害時")));
    gw.stop().await;
}

#[tokio::test]
async fn break_glass_notices_reach_the_owner_inbox_api_and_metrics() {
    let gw = TestGateway::start().await;
    let clinic_a = gw.client(Some(&gw.issue("clinic-a-system", CLINIC, Role::HospitalSystem)));
    let a_patient = clinic_a.first_id(gw.addr, "/fhir/Patient?identifier=A-0101").await;
    let hub_p = hub_patient(&gw, "1000003").await;
    let doctor = gw.client(Some(&gw.issue("oncall", CLINIC_B, Role::Doctor)));
    for p in [&a_patient, &hub_p] {
        let r = doctor.send(gw.addr, with_header(&format!("/fhir/Patient/{p}"), "kakehashi-break-glass", GLASS));
        assert_eq!(r.await.unwrap().status, 200);
    }
    // Clinic A has an inbox: the notice is written there as a FHIR Communication.
    let inbox = gw.dir.path().join("sites/clinic-a/inbox");
    let file = || {
        std::fs::read_dir(&inbox)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("break-glass-")))
    };
    assert!(eventually(10, || async { file().is_some() }).await, "no notice in the inbox");
    let path = file().unwrap();
    let notice: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(notice["resourceType"], "Communication");
    assert_eq!(notice["subject"]["reference"], format!("Patient/{a_patient}"));
    assert_eq!(notice["recipient"][0]["identifier"]["value"], CLINIC);
    assert_eq!(notice["sender"]["identifier"]["value"], CLINIC_B);
    assert!(notice["reasonCode"][0]["text"].as_str().unwrap().contains("意識障害で搬送"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&inbox).unwrap().permissions().mode() & 0o777, 0o700);
    // Independent FHIR validation of the notice (scripts/test runs the validator on this folder).
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-out/e2e");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("break-glass-communication.json"), notice.to_string()).unwrap();

    // The owner's hospital system reads its notices through the API; nobody else does.
    let listed = clinic_a.get(gw.addr, "/fhir/Communication").await.unwrap().json();
    assert_eq!(listed["total"], 1, "{listed}");
    let id = listed["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(listed["entry"][0]["resource"]["status"], "completed");
    assert_eq!(clinic_a.get(gw.addr, &format!("/fhir/Communication/{id}")).await.unwrap().status, 200);
    let terminal = gw.client(Some(&gw.issue("clinic-a-t", CLINIC, Role::ClinicTerminal)));
    assert_eq!(terminal.get(gw.addr, "/fhir/Communication").await.unwrap().status, 403);
    // Refused roles leave a trace, here and for grants (Consent) too.
    assert_eq!(terminal.get(gw.addr, "/fhir/Consent").await.unwrap().status, 403);
    for needle in ["break-glass notices are read by", "grants are managed by the owner"] {
        assert!(events_with(&gw, needle).await.iter().any(|(o, _)| o == "4"), "{needle}: not audited");
    }
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    assert_eq!(hub.get(gw.addr, &format!("/fhir/Communication/{id}")).await.unwrap().status, 404);
    // The hub has no inbox: its notice is held for its API, and says so as completed.
    assert!(
        eventually(10, || async {
            let v = hub.get(gw.addr, "/fhir/Communication").await.unwrap().json();
            v["total"] == 1 && v["entry"][0]["resource"]["status"] == "completed"
        })
        .await
    );
    let m = metrics(&gw).await;
    assert!(m.contains("kakehashi_outbox_deliveries_total{kind=\"break-glass\",result=\"delivered\"} 2"), "{m}");
    gw.stop().await;
}

#[tokio::test]
async fn bad_numbers_and_paths_get_operation_outcomes_and_no_database_text() {
    let gw = TestGateway::start().await;
    let auditor = gw.client(Some(&gw.issue("aud", AUDIT_BODY, Role::Auditor)));
    for (q, expr) in [
        ("_offset=99999999999999999999", "_offset"),
        ("_offset=9223372036854775807", "_offset"),
        ("_offset=-1", "_offset"),
        ("_count=99999999999999999999", "_count"),
        ("_before=-5", "_before"),
        ("date=2026-13-40", "date"),
    ] {
        let r = auditor.get(gw.addr, &format!("/fhir/AuditEvent?{q}")).await.unwrap();
        assert_eq!(r.status, 400, "{q}");
        let body = String::from_utf8_lossy(&r.body).to_lowercase();
        assert!(!body.contains("sqlite") && !body.contains("sql") && !body.contains("database"), "{q}: {body}");
        assert_eq!(r.json()["issue"][0]["expression"][0], expr, "{q}");
    }
    assert_eq!(events_with(&gw, "invalid query").await.len(), 6, "each malformed query is audited");
    // A path that is not UTF-8 is a 400 OperationOutcome, not axum's text.
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    for path in ["/fhir/Patient/%ff", "/fhir/Patient/%ff/$everything", "/fhir/%ff", "/fhir/Patient/a%2Fb"] {
        let r = clinic.get(gw.addr, path).await.unwrap();
        assert_eq!(r.status, 400, "{path}");
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/fhir+json"), "{path}");
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn links_use_the_configured_base_url_never_the_host_header() {
    let gw = TestGateway::start_with("public_base_url = \"https://gw.example.jp/fhir\"").await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let req = http::Request::get("/fhir/Patient?_count=1")
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let v = hub.send(gw.addr, req).await.unwrap().json();
    assert!(v["entry"][0]["fullUrl"].as_str().unwrap().starts_with("https://gw.example.jp/fhir/Patient/"), "{v}");
    for l in v["link"].as_array().unwrap() {
        assert!(l["url"].as_str().unwrap().starts_with("https://gw.example.jp/fhir/Patient?"), "{l}");
    }
    assert!(!v.to_string().contains("evil.example"));
    gw.stop().await;
}

#[tokio::test]
async fn connections_per_certificate_are_capped_with_a_clear_refusal() {
    let gw = TestGateway::start_with("max_connections_per_certificate = 2").await;
    let id = gw.issue("busy", CLINIC, Role::ClinicTerminal);
    let first = open(&gw, &id, false).await;
    let _second = open(&gw, &id, false).await;
    let third = gw.client(Some(&id)).get(gw.addr, "/fhir/metadata").await.unwrap();
    assert_eq!(third.status, 503);
    assert!(third.headers.contains_key("retry-after"));
    assert_eq!(third.json()["resourceType"], "OperationOutcome");
    let other = gw.client(Some(&gw.issue("calm", CLINIC, Role::ClinicTerminal)));
    assert_eq!(other.get(gw.addr, "/fhir/metadata").await.unwrap().status, 200);
    drop(first);
    let freed = eventually(5, || async {
        gw.client(Some(&id)).get(gw.addr, "/fhir/metadata").await.is_ok_and(|r| r.status == 200)
    });
    assert!(freed.await, "a closed connection gives its place back");
    assert!(metrics(&gw).await.contains("kakehashi_connections_refused_total{limit=\"certificate\"} 1"));
    gw.stop().await;
}

#[tokio::test]
async fn the_database_and_the_witness_are_readable_by_their_owner_only() {
    if backend_is_postgres() {
        return; // PostgreSQL files are the server's.
    }
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    assert_eq!(hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap().status, 200);
    use std::os::unix::fs::PermissionsExt;
    let db = gw.db_path();
    for f in [db.clone(), db.with_extension("db-wal"), db.with_extension("db-shm"), gw.witness_path()] {
        let mode = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_request_refused_before_its_body_is_answered_over_http2() {
    let gw = TestGateway::start().await;
    let rx = gw.issue("rx", PHARMACY, Role::Pharmacy);
    let h2 = Client::new(&gw.pki.ca_cert_path(), Some(&rx), &[b"h2"], None);
    let body = serde_json::json!({"resourceType": "Bundle", "type": "document", "entry": [{"fullUrl": "x".repeat(3_000_000)}]});
    let r = h2.post_json(gw.addr, "/fhir", &body).await.expect("the refusal arrives, not a stream reset");
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    // The same for a certificate refused at the identity step.
    let outsider = gw.issue("outsider", kakehashi_e2e::OUTSIDER, Role::HospitalSystem);
    let h2 = Client::new(&gw.pki.ca_cert_path(), Some(&outsider), &[b"h2"], None);
    let r = h2.post_json(gw.addr, "/fhir", &body).await.expect("the refusal arrives, not a stream reset");
    assert_eq!(r.status, 403);
    // curl is stricter than hyper's client: before the fix it ended with "(92) Stream
    // error in the HTTP/2 framing layer" instead of the 403.
    let file = gw.dir.path().join("big.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let pki = gw.dir.path().join("pki");
    for who in ["rx", "outsider"] {
        // tokio's Command: the gateway serves on this test's runtime, which must not block.
        let Ok(out) = tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "--http2", "--cacert"])
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join(format!("{who}.pem")))
            .arg("--key")
            .arg(pki.join(format!("{who}.key")))
            .args(["-H", "content-type: application/fhir+json", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("https://localhost:{}/fhir", gw.addr.port()))
            .output()
            .await
        else {
            eprintln!("curl not installed; the hyper client's check above stands");
            break;
        };
        assert!(out.status.success(), "{who}: curl exit {:?}", out.status.code());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{who}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn instances_starting_together_on_a_fresh_database_both_migrate() {
    if !backend_is_postgres() {
        return; // One SQLite file has one gateway.
    }
    for _ in 0..3 {
        let url = kakehashi_e2e::fresh_postgres_database().await;
        let (a, b) = tokio::join!(kakehashi::store::Store::open(&url), kakehashi::store::Store::open(&url));
        a.expect("first instance");
        b.expect("second instance");
    }
}
