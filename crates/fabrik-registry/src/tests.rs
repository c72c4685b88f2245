use super::*;

async fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::open(&dir.path().join("registry.db"))
        .await
        .expect("open");
    (dir, registry)
}

fn pump(id: &str) -> NewDevice {
    NewDevice {
        id: id.into(),
        device_type: Some("pump".into()),
        site: Some("north".into()),
        labels: [("line".to_owned(), "2".to_owned())].into(),
        ..NewDevice::default()
    }
}

#[tokio::test]
async fn a_device_is_registered_with_a_token_that_authenticates_it_once_rotated_never_again() {
    let (_dir, registry) = registry().await;
    let (device, token) = registry.add(pump("pump-1")).await.expect("add");
    assert_eq!(device.id, "pump-1");
    assert_eq!(device.name, "pump-1");
    assert_eq!(device.state, "never");
    assert!(registry.authenticate("pump-1", &token).await.is_ok());
    assert!(matches!(
        registry.authenticate("pump-1", "fdt_wrong").await,
        Err(RegistryError::BadCredentials)
    ));
    assert!(matches!(
        registry.authenticate("nobody", &token).await,
        Err(RegistryError::BadCredentials)
    ));
    let new_token = registry.rotate_token("pump-1").await.expect("rotate");
    assert_ne!(new_token, token);
    assert!(matches!(
        registry.authenticate("pump-1", &token).await,
        Err(RegistryError::BadCredentials)
    ));
    assert!(registry.authenticate("pump-1", &new_token).await.is_ok());
    let kinds: Vec<String> = registry
        .events("pump-1", 10)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec!["token_rotated", "registered"]);
}

#[tokio::test]
async fn bad_ids_duplicates_and_disabled_devices_are_refused() {
    let (_dir, registry) = registry().await;
    for bad in ["", "a/b", "+", "#", "has space"] {
        assert!(
            matches!(
                registry.add(pump(bad)).await,
                Err(RegistryError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let (_, token) = registry.add(pump("p")).await.expect("add");
    assert!(matches!(
        registry.add(pump("p")).await,
        Err(RegistryError::Exists(_))
    ));
    let mut sparkplug = pump("gw");
    sparkplug.sparkplug_node = Some("plant/+".into());
    assert!(matches!(
        registry.add(sparkplug).await,
        Err(RegistryError::Invalid(_))
    ));
    registry
        .patch(
            "p",
            DevicePatch {
                disabled: Some(true),
                ..DevicePatch::default()
            },
        )
        .await
        .expect("disable");
    assert!(matches!(
        registry.authenticate("p", &token).await,
        Err(RegistryError::BadCredentials)
    ));
}

#[tokio::test]
async fn listing_filters_and_state_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.db");
    {
        let registry = Registry::open(&path).await.expect("open");
        registry.add(pump("a")).await.expect("a");
        let mut b = pump("b");
        b.site = Some("south".into());
        b.labels.clear();
        registry.add(b).await.expect("b");
        registry
            .set_connected("a", true, "127.0.0.1:5000")
            .await
            .expect("online");
        registry.count_message("a", false);
        registry.count_message("a", true);
        let by_site = registry
            .list(&DeviceFilter {
                site: Some("south".into()),
                ..DeviceFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(by_site.len(), 1);
        assert_eq!(by_site[0].id, "b");
        let by_label = registry
            .list(&DeviceFilter {
                label: Some("line=2".into()),
                ..DeviceFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(
            by_label.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        let online = registry
            .list(&DeviceFilter {
                state: Some("online".into()),
                ..DeviceFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(online.len(), 1);
        let a = registry.get("a").await.expect("a");
        assert_eq!((a.messages, a.errors), (2, 1), "counted before the flush");
        registry.close().await;
    }
    let registry = Registry::open(&path).await.expect("reopen");
    let a = registry.get("a").await.expect("a");
    assert_eq!(
        (a.messages, a.errors),
        (2, 1),
        "counts were written at close"
    );
    assert_eq!(a.state, "offline", "a restart ends old connections");
    registry.remove("b").await.expect("remove");
    assert!(matches!(
        registry.get("b").await,
        Err(RegistryError::NotFound(_))
    ));
}

#[tokio::test]
async fn names_that_stand_for_something_else_are_not_user_names() {
    let (_dir, registry) = registry().await;
    for name in ["admin-token", "anonymous", "unknown"] {
        let refused = registry.add_user(name, Role::Admin, None).await;
        assert!(
            matches!(&refused, Err(RegistryError::Invalid(m)) if m.contains("reserved")),
            "{name}: {refused:?}"
        );
    }
    assert!(registry.add_user("ana", Role::Viewer, None).await.is_ok());
}
