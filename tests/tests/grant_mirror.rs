//! Each gateway mirrors the grants in memory and brings the mirror up to date every two
//! seconds: after the first load it reads only the grants changed since, on SQLite and
//! on a shared PostgreSQL database alike.

use kakehashi::policy::grants::{Grant, GrantKind, Grants};
use kakehashi::store::Store;
use kakehashi_e2e::{backend_is_postgres, fresh_postgres_database};

fn grant(id: &str, patient: &str) -> Grant {
    Grant {
        id: id.into(),
        owner: "4610100011".into(),
        kind: GrantKind::Consent,
        patient: patient.into(),
        grantees: vec!["4610200021".into()],
        resource_types: vec![],
        valid_from: 0,
        valid_to: 4_000_000_000,
        revoked_at: None,
        resource: "{}".into(),
    }
}

#[tokio::test]
async fn a_second_mirror_reads_only_the_grants_changed_since_it_last_looked() {
    let dir = tempfile::tempdir().unwrap();
    let url = if backend_is_postgres() {
        fresh_postgres_database().await
    } else {
        format!("sqlite://{}", dir.path().join("grants.db").display())
    };
    let store = Store::open(&url).await.unwrap();
    let (writer, other) = (Grants::default(), Grants::default());
    assert_eq!(other.reload(&store).await.unwrap(), 0, "no grants yet");

    writer.insert(&store, &grant("g1", "p1"), "test").await.unwrap();
    writer.insert(&store, &grant("g2", "p2"), "test").await.unwrap();
    assert_eq!(other.reload(&store).await.unwrap(), 2);
    assert_eq!(other.reload(&store).await.unwrap(), 0, "nothing changed since");
    assert!(other.first_of("4610100011", "p1", |_| true).is_some());

    writer.revoke(&store, "4610100011", "g1", 1_000).await.unwrap();
    assert_eq!(other.reload(&store).await.unwrap(), 1, "only the revoked grant");
    assert_eq!(other.by_id("g1").and_then(|g| g.revoked_at), Some(1_000));
    assert_eq!(other.find(|_| true).len(), 2);

    writer.insert(&store, &grant("g3", "p1"), "test").await.unwrap();
    assert_eq!(other.reload(&store).await.unwrap(), 1);
    let active: Vec<String> = other.find(|g| g.active_at(2_000)).into_iter().map(|g| g.id).collect();
    assert_eq!(active, ["g2", "g3"]);

    // A mirror starting now loads everything once.
    let late = Grants::default();
    assert_eq!(late.reload(&store).await.unwrap(), 3);
    assert_eq!(late.by_id("g1").and_then(|g| g.revoked_at), Some(1_000));
}
