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

mod attestation {
    use super::*;
    use crate::attestation::{AllowInput, Evidence, PolicyBody};
    use base64::Engine as _;
    use fabrik_runtime::config::AttestationSettings;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tpm");
    /// The nonce the fixtures' quotes carry.
    const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
    }

    fn evidence() -> Evidence {
        let b64 = |name: &str| base64::engine::general_purpose::STANDARD.encode(fixture(name));
        Evidence {
            nonce: NONCE.into(),
            quote: b64("quote-ecc.msg"),
            signature: b64("quote-ecc.sig"),
            pcrs: b64("pcrs-ecc.bin"),
            event_log: None,
            ima_log: None,
            ima_log_offset: None,
        }
    }

    fn nonce() -> [u8; 32] {
        crate::tpm::unhex(NONCE)
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    /// Why `gw-1` may not connect now (`None`: it may).
    async fn gate(registry: &Registry, settings: &AttestationSettings) -> Option<String> {
        registry
            .attestation_gate("gw-1", settings)
            .await
            .expect("gate")
    }

    #[tokio::test]
    async fn a_runtime_policy_is_kept_per_type_and_replaced_whole() {
        use crate::attestation::RuntimePolicy;
        let (_dir, registry) = registry().await;
        assert!(
            registry
                .runtime_policy("gateway")
                .await
                .expect("read")
                .is_none()
        );
        let policy = |path: &str| RuntimePolicy {
            allowed: std::collections::BTreeMap::from([(path.to_owned(), vec!["ab".repeat(32)])]),
            excludes: Vec::new(),
            violations_fail: true,
            signing_keys: Vec::new(),
            updated_at: 0,
        };
        let first = registry
            .set_runtime_policy("gateway", policy("/usr/bin/a"))
            .await
            .expect("set");
        let second = registry
            .set_runtime_policy("gateway", policy("/usr/bin/b"))
            .await
            .expect("replace");
        assert!(second.updated_at >= first.updated_at);
        let read = registry
            .runtime_policy("gateway")
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(read, second);
        assert_eq!(
            read.allowed["/usr/bin/b"],
            [format!("sha256:{}", "ab".repeat(32))]
        );
        // Two operators at once: each is one statement, so neither collides on the key.
        let (a, b) = tokio::join!(
            registry.set_runtime_policy("gateway", policy("/x")),
            registry.set_runtime_policy("gateway", policy("/y"))
        );
        a.expect("a");
        b.expect("b");
        let bad = registry
            .set_runtime_policy("gateway", policy("relative/x"))
            .await
            .expect_err("relative path");
        assert!(matches!(bad, RegistryError::Invalid(_)), "{bad}");
        registry
            .remove_runtime_policy("gateway")
            .await
            .expect("remove");
        assert!(matches!(
            registry.remove_runtime_policy("gateway").await,
            Err(RegistryError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_pass_from_before_versions_were_recorded_stands_under_the_policy_it_met() {
        use crate::attestation::{AttestationRecord, RuntimePolicy};
        let (_dir, registry) = gateway().await;
        let policy = registry
            .set_runtime_policy(
                "gateway",
                RuntimePolicy {
                    allowed: std::collections::BTreeMap::from([(
                        "/usr/bin/a".to_owned(),
                        vec!["ab".repeat(32)],
                    )]),
                    excludes: Vec::new(),
                    violations_fail: true,
                    signing_keys: Vec::new(),
                    updated_at: 0,
                },
            )
            .await
            .expect("policy");
        let verdict = |time: i64| -> AttestationRecord {
            serde_json::from_value(serde_json::json!({
                "time": time, "passed": true, "authentic": true, "reasons": [],
                "key_fingerprint": "k", "policy": "gateway", "pcrs": {}, "reset_count": 1,
                "restart_count": 0, "firmware_version": 0, "clock": 0,
                "ima": {"entries": 3, "covered": 3, "bank": "sha256", "matches": true,
                    "extension": "template_data", "violations": 0, "not_allowed": 0}
            }))
            .expect("a verdict as older versions stored it")
        };
        // Judged after the policy was set (it has not changed since): judged under it.
        let after = registry
            .runtime_reasons_now("gw-1", "gateway", &verdict(policy.updated_at + 1))
            .await
            .expect("after");
        assert!(after.is_empty(), "{after:?}");
        // Judged before it: its kept entries would be needed, and there are none.
        let before = registry
            .runtime_reasons_now("gw-1", "gateway", &verdict(policy.updated_at - 1))
            .await
            .expect("before");
        assert!(before[0].contains("without an IMA log"), "{before:?}");
    }

    #[tokio::test]
    async fn additions_to_a_runtime_policy_are_merged_and_none_is_lost() {
        use crate::attestation::RuntimePolicyAddition;
        let (_dir, registry) = registry().await;
        registry.add(pump("p-1")).await.expect("add");
        let allow = |path: &str, digest: &str| RuntimePolicyAddition {
            allowed: std::collections::BTreeMap::from([(path.to_owned(), vec![digest.repeat(32)])]),
            ..RuntimePolicyAddition::default()
        };
        // The first addition makes the policy, violations failing.
        let made = registry
            .add_to_runtime_policy("gateway", allow("/usr/bin/a", "aa"))
            .await
            .expect("made");
        assert!(made.violations_fail);
        // Two operators at once: both additions land, neither overwrites the other.
        let (b, c) = tokio::join!(
            registry.add_to_runtime_policy("gateway", allow("/usr/bin/b", "bb")),
            registry.add_to_runtime_policy("gateway", allow("/usr/bin/a", "cc"))
        );
        b.expect("b");
        c.expect("c");
        let mut excludes = RuntimePolicyAddition {
            excludes: vec!["/var/log".into()],
            ..RuntimePolicyAddition::default()
        };
        registry
            .add_to_runtime_policy("gateway", excludes.clone())
            .await
            .expect("excludes");
        // Again: nothing doubles.
        registry
            .add_to_runtime_policy("gateway", excludes.clone())
            .await
            .expect("excludes again");
        registry
            .add_to_runtime_policy("gateway", allow("/usr/bin/a", "aa"))
            .await
            .expect("again");
        let policy = registry
            .runtime_policy("gateway")
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(
            policy.allowed["/usr/bin/a"],
            [
                format!("sha256:{}", "aa".repeat(32)),
                format!("sha256:{}", "cc".repeat(32))
            ]
        );
        assert_eq!(policy.allowed["/usr/bin/b"].len(), 1);
        assert_eq!(policy.excludes, ["/var/log"]);
        // Bad input names its place and changes nothing.
        excludes.excludes = vec!["var/log".into()];
        let bad = registry
            .add_to_runtime_policy("gateway", excludes)
            .await
            .expect_err("relative");
        assert!(bad.to_string().contains("excludes[0]"), "{bad}");
        for (device, says) in [("nobody", "no device `nobody`"), ("p-1", "no IMA log")] {
            let bad = registry
                .add_to_runtime_policy(
                    "gateway",
                    RuntimePolicyAddition {
                        from_device: Some(device.into()),
                        ..RuntimePolicyAddition::default()
                    },
                )
                .await
                .expect_err("no log");
            assert!(
                matches!(&bad, RegistryError::Invalid(why) if why.contains(says)),
                "{bad}"
            );
        }
        assert_eq!(
            registry.runtime_policy("gateway").await.expect("read"),
            Some(policy)
        );
    }

    async fn gateway() -> (tempfile::TempDir, Registry) {
        let (dir, registry) = registry().await;
        registry
            .add(NewDevice {
                id: "gw-1".into(),
                device_type: Some("gateway".into()),
                ..NewDevice::default()
            })
            .await
            .expect("add");
        (dir, registry)
    }

    #[tokio::test]
    async fn a_quote_passes_against_a_golden_devices_values_and_opens_the_gate_once() {
        let (_dir, registry) = gateway().await;
        let settings = AttestationSettings::default();
        assert_eq!(gate(&registry, &settings).await, None);
        let pem = String::from_utf8(fixture("ak-ecc.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrol");
        let closed = gate(&registry, &settings).await;
        assert!(closed.expect("closed").contains("has not attested"));

        // No reference values yet: authentic, but deny by default.
        registry.open_challenge("gw-1", nonce());
        let first = registry
            .attest("gw-1", &evidence(), true)
            .await
            .expect("attest");
        assert!(first.authentic && !first.passed, "{first:?}");
        assert!(first.reasons[0].contains("no reference values for device type `gateway`"));

        // The golden device's own values become the policy; the next quote passes.
        let policy = registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    from_device: Some("gw-1".into()),
                    pcrs: Some(vec![0, 4, 7]),
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("policy");
        assert_eq!(
            policy.accept[0].keys().copied().collect::<Vec<_>>(),
            vec![0, 4, 7]
        );
        registry.open_challenge("gw-1", nonce());
        let passed = registry
            .attest("gw-1", &evidence(), true)
            .await
            .expect("attest");
        assert!(passed.passed, "{passed:?}");
        assert_eq!(gate(&registry, &settings).await, None);

        // The same quote again: its challenge is used up. Not authentic, so it does not
        // close the gate a genuine quote opened.
        let replayed = registry
            .attest("gw-1", &evidence(), true)
            .await
            .expect("attest");
        assert!(!replayed.authentic && !replayed.passed);
        assert!(
            replayed.reasons[0].contains("a replayed quote?"),
            "{replayed:?}"
        );
        assert_eq!(gate(&registry, &settings).await, None);

        // A policy the device no longer meets: PCR 4 named, the gate closed.
        let mut changed = policy.accept[0].clone();
        changed.insert(4, "ab".repeat(32));
        let set = changed
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    accept: vec![set],
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("policy");
        // The pass no longer holds under the new values, before any new quote.
        let closed = gate(&registry, &settings).await.expect("closed");
        assert!(
            closed.contains("no longer meets the reference values of type `gateway`: PCR 4 is"),
            "{closed}"
        );
        registry.open_challenge("gw-1", nonce());
        let failed = registry
            .attest("gw-1", &evidence(), true)
            .await
            .expect("attest");
        assert!(failed.authentic && !failed.passed);
        assert_eq!(failed.reasons.len(), 1, "{failed:?}");
        assert!(
            failed.reasons[0].starts_with("PCR 4 is 828c248c"),
            "{failed:?}"
        );
        let closed = gate(&registry, &settings).await;
        assert!(closed.expect("closed").contains("PCR 4 is"));

        // An expired pass closes it too.
        let short = AttestationSettings {
            max_age: std::time::Duration::from_nanos(1),
            ..settings.clone()
        };
        registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("policy");
        registry.open_challenge("gw-1", nonce());
        assert!(
            registry
                .attest("gw-1", &evidence(), true)
                .await
                .expect("attest")
                .passed
        );
        let expired = gate(&registry, &short).await;
        assert!(expired.expect("closed").contains("expired"));
        let status = registry
            .attestation_status("gw-1", &settings, 10)
            .await
            .expect("status");
        assert!(status.may_connect && status.required);
        assert_eq!(status.history.len(), 5);

        // Moved to a type with no reference values: shut out at once.
        let moved = DevicePatch {
            device_type: Some("hmi".into()),
            ..DevicePatch::default()
        };
        registry.patch("gw-1", moved).await.expect("patch");
        let closed = gate(&registry, &settings).await;
        assert!(
            closed
                .expect("closed")
                .contains("no reference values for device type `hmi`")
        );
        let back = DevicePatch {
            device_type: Some("gateway".into()),
            ..DevicePatch::default()
        };
        registry.patch("gw-1", back).await.expect("patch");
        assert_eq!(gate(&registry, &settings).await, None);

        // A new key: what the old one vouched for no longer counts.
        let rsa = String::from_utf8(fixture("ak-rsa.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &rsa)
            .await
            .expect("enrol");
        let closed = gate(&registry, &settings).await;
        assert!(
            closed
                .expect("closed")
                .contains("has not attested with its enrolled key")
        );

        // A removed device leaves nothing behind.
        registry.remove("gw-1").await.expect("remove");
        registry
            .add(NewDevice {
                id: "gw-1".into(),
                ..NewDevice::default()
            })
            .await
            .expect("add");
        assert_eq!(gate(&registry, &settings).await, None);
    }

    #[tokio::test]
    async fn an_enrolled_key_still_gates_the_device_after_a_restart() {
        let (dir, registry) = gateway().await;
        let pem = String::from_utf8(fixture("ak-ecc.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrol");
        registry.close().await;
        let reopened = Registry::open(&dir.path().join("registry.db"))
            .await
            .expect("reopen");
        let settings = AttestationSettings::default();
        let closed = gate(&reopened, &settings).await;
        assert!(closed.expect("closed").contains("has not attested"));
        reopened
            .remove_attestation_key("gw-1")
            .await
            .expect("unenrol");
        assert_eq!(gate(&reopened, &settings).await, None);
    }

    #[tokio::test]
    async fn a_device_has_at_most_four_open_challenges() {
        let (_dir, registry) = gateway().await;
        let mut nonces = Vec::new();
        for _ in 0..5 {
            let c = registry
                .attestation_challenge("gw-1", true)
                .await
                .expect("challenge");
            nonces.push(crate::tpm::unhex(&c.nonce).expect("hex"));
        }
        assert!(
            !registry.take_challenge("gw-1", &nonces[0], true),
            "the oldest was dropped"
        );
        assert!(
            !registry.take_challenge("gw-2", &nonces[4], true),
            "another device's"
        );
        assert!(registry.take_challenge("gw-1", &nonces[4], true));
        assert!(
            !registry.take_challenge("gw-1", &nonces[4], true),
            "answered once"
        );
        assert!(registry.take_challenge("gw-1", &nonces[1], true));

        // An admin's challenge is counted apart: five more of the device's leave it open,
        // and only the admin's side answers it.
        let admins = registry
            .attestation_challenge("gw-1", false)
            .await
            .expect("challenge");
        let admins = crate::tpm::unhex(&admins.nonce).expect("hex");
        for _ in 0..5 {
            registry
                .attestation_challenge("gw-1", true)
                .await
                .expect("challenge");
        }
        assert!(
            !registry.take_challenge("gw-1", &admins, true),
            "not the device's to answer"
        );
        assert!(registry.take_challenge("gw-1", &admins, false));
    }

    /// An event log of the fixtures' boot: PCRs 0 to 7 extended once each with the digest of
    /// `boot stage N` (`make.sh`), PCR 4's as an image load of the boot loader, the others as
    /// events whose data is that text.
    fn fixture_boot_log(stage_four: &str) -> Vec<u8> {
        use crate::tpm::event_log::{self, EventLog, LogBank, LoggedEvent};
        use sha2::Digest as _;
        let events = (0..8)
            .map(|pcr| {
                let content = if pcr == 4 {
                    stage_four.to_owned()
                } else {
                    format!("boot stage {pcr}")
                };
                let (event_type, data) = if pcr == 4 {
                    (
                        event_log::EV_EFI_BOOT_SERVICES_APPLICATION,
                        event_log::efi_image_load("\\EFI\\BOOT\\BOOTX64.EFI"),
                    )
                } else {
                    // What was measured is the text itself, as a POST code's description.
                    (0x1, content.clone().into_bytes())
                };
                LoggedEvent {
                    pcr,
                    event_type,
                    digests: vec![(0x000b, sha2::Sha256::digest(content.as_bytes()).to_vec())],
                    data,
                }
            })
            .collect();
        event_log::encode(&EventLog {
            banks: vec![LogBank {
                algorithm: 0x000b,
                size: 32,
            }],
            crypto_agile: true,
            events,
        })
    }

    #[tokio::test]
    async fn an_event_log_must_replay_to_the_quote_and_becomes_the_policys_reference() {
        let (_dir, registry) = gateway().await;
        let pem = String::from_utf8(fixture("ak-ecc.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrol");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let with_log = |log: &[u8]| Evidence {
            event_log: Some(b64(log)),
            ..evidence()
        };

        // A malformed log is bad evidence: refused, and the challenge is still open.
        registry.open_challenge("gw-1", nonce());
        let mut cut = fixture_boot_log("boot stage 4");
        cut.truncate(cut.len() - 2);
        let refused = registry.attest("gw-1", &with_log(&cut), true).await;
        assert!(
            matches!(&refused, Err(RegistryError::Invalid(m)) if m.starts_with("event_log: event log: event 8")),
            "{refused:?}"
        );

        // The boot's own log replays to the quoted PCRs: its events are kept.
        let record = registry
            .attest("gw-1", &with_log(&fixture_boot_log("boot stage 4")), true)
            .await
            .expect("attest");
        assert!(record.authentic, "{record:?}");
        let check = record.event_log.clone().expect("checked");
        assert!(check.matches, "{record:?}");
        assert_eq!(check.replayed, vec![0, 1, 2, 3, 4, 7]);
        let kept = registry
            .device_event_log("gw-1")
            .await
            .expect("log")
            .expect("kept");
        // The events of the PCRs the replay checked (the quote's 0-4 and 7), not 5 and 6.
        assert_eq!(
            kept.events.iter().map(|e| e.pcr).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 7]
        );
        assert!(
            !kept.events[4].verified,
            "an image's path is the device's claim"
        );
        assert!(
            kept.events[0].verified,
            "a POST code's digest is of its data"
        );
        assert_eq!(kept.events[4].description, "\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!(kept.time, record.time);

        // Its values and log become the type's reference.
        let policy = registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("policy");
        let reference = policy.reference_log.expect("reference log");
        assert_eq!(
            (
                reference.device.as_str(),
                reference.events.len(),
                reference.set
            ),
            ("gw-1", 6, 0)
        );
        let read = registry
            .attestation_policy_with_log("gateway")
            .await
            .expect("policy")
            .expect("set");
        assert_eq!(read.reference_log, Some(reference));

        // A log that leaves out or alters what was measured does not replay: the authentic
        // quote fails, and the kept log stays the one that replayed.
        registry.open_challenge("gw-1", nonce());
        let forged = registry
            .attest(
                "gw-1",
                &with_log(&fixture_boot_log("a clean boot loader")),
                true,
            )
            .await
            .expect("attest");
        assert!(forged.authentic && !forged.passed, "{forged:?}");
        assert_eq!(forged.event_log.as_ref().map(|c| c.matches), Some(false));
        assert!(
            forged.reasons.iter().any(|r| r.starts_with(
                "the event log does not replay to the quoted sha256 PCR 4: its events extend to"
            )),
            "{forged:?}"
        );
        let kept_after = registry
            .device_event_log("gw-1")
            .await
            .expect("log")
            .expect("kept");
        assert_eq!(kept_after.time, kept.time);

        // A SHA-1-only log cannot be checked against a sha256 quote: said so.
        let mut old = crate::tpm::event_log::parse(&fixture_boot_log("boot stage 4")).expect("log");
        old.crypto_agile = false;
        old.banks = vec![crate::tpm::event_log::LogBank {
            algorithm: 0x0004,
            size: 20,
        }];
        for event in &mut old.events {
            event.digests = vec![(0x0004, vec![0; 20])];
        }
        registry.open_challenge("gw-1", nonce());
        let sha1 = registry
            .attest(
                "gw-1",
                &with_log(&crate::tpm::event_log::encode(&old)),
                true,
            )
            .await
            .expect("attest");
        assert!(!sha1.passed);
        assert!(
            sha1.reasons
                .iter()
                .any(|r| r.contains("has no sha256 digests (it has sha1)")),
            "{sha1:?}"
        );

        // The device's log goes with it.
        registry.remove("gw-1").await.expect("remove");
        assert!(matches!(
            registry.device_event_log("gw-1").await,
            Err(RegistryError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn measured_pcrs_are_judged_by_their_events_and_a_withdrawn_digest_closes_the_gate() {
        let (_dir, registry) = gateway().await;
        let settings = AttestationSettings::default();
        let pem = String::from_utf8(fixture("ak-ecc.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrol");
        let log = fixture_boot_log("boot stage 4");
        let with_log = Evidence {
            event_log: Some(base64::engine::general_purpose::STANDARD.encode(&log)),
            ..evidence()
        };
        let attest = |evidence: Evidence| {
            registry.open_challenge("gw-1", nonce());
            let registry = &registry;
            async move {
                registry
                    .attest("gw-1", &evidence, true)
                    .await
                    .expect("attest")
            }
        };
        // Learning needs a log that replayed.
        attest(evidence()).await;
        let refused = registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    measure: Some(vec![0, 4, 7]),
                    allow_from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("`gw-1`'s last authentic quote came without an event log that replayed"),
            "{refused}"
        );
        attest(with_log.clone()).await;
        // PCRs 1-3 by value, 0, 4 and 7 by their events; a log is required.
        let policy = registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    from_device: Some("gw-1".into()),
                    pcrs: Some(vec![1, 2, 3]),
                    measure: Some(vec![7, 0, 4]),
                    allow_from_device: Some("gw-1".into()),
                    require_event_log: Some(true),
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("policy");
        assert_eq!(policy.measured_pcrs, vec![0, 4, 7]);
        assert_eq!(
            policy.allowed.iter().map(|m| m.pcr).collect::<Vec<_>>(),
            vec![0, 4, 7]
        );
        assert!(
            policy.allowed[1]
                .note
                .contains("named \\EFI\\BOOT\\BOOTX64.EFI")
        );
        assert!(
            policy.allowed[1]
                .source
                .starts_with("device gw-1, quote of ")
        );
        let stage_four = policy.allowed[1].digest.clone();
        assert!(attest(with_log.clone()).await.passed);
        assert_eq!(gate(&registry, &settings).await, None);
        // Without its log the same quote fails.
        let bare = attest(evidence()).await;
        assert!(!bare.passed);
        assert_eq!(
            bare.reasons,
            vec![
                "PCRs 0, 4, 7 of type `gateway` are judged by their measured-boot events, and no event log that replays to the quote came with it"
            ]
        );
        assert!(attest(with_log.clone()).await.passed);

        // The boot loader's digest withdrawn: the pass no longer holds, before any quote,
        // and the event is named.
        let revoked = registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    merge: true,
                    revoke: vec![stage_four.to_uppercase()],
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("revoked");
        assert_eq!(revoked.accept, policy.accept, "merging keeps the sets");
        assert!(revoked.require_event_log);
        assert_eq!(revoked.allowed.len(), 2);
        let closed = gate(&registry, &settings).await.expect("closed");
        assert!(
            closed.contains(&format!(
                "PCR 4 event 5 (EV_EFI_BOOT_SERVICES_APPLICATION named \\EFI\\BOOT\\BOOTX64.EFI) measured {stage_four}, which the policy of type `gateway` does not allow"
            )),
            "{closed}"
        );
        let failed = attest(with_log.clone()).await;
        assert!(!failed.passed && failed.reasons.len() == 1, "{failed:?}");

        // Allowed again by the operator, by digest: open again without a new quote.
        registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    merge: true,
                    allow: vec![AllowInput {
                        pcr: 4,
                        digest: stage_four.clone(),
                        note: Some("shim 15.8".into()),
                    }],
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("allowed");
        assert!(attest(with_log.clone()).await.passed);
        // A changed value of a PCR judged by value still fails, however its events look.
        let mut moved = policy.accept[0].clone();
        moved.insert(2, "cd".repeat(32));
        registry
            .set_attestation_policy(
                "gateway",
                PolicyBody {
                    accept: vec![moved.into_iter().map(|(k, v)| (k.to_string(), v)).collect()],
                    measure: Some(vec![0, 4, 7]),
                    allow_from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
            )
            .await
            .expect("policy");
        let closed = gate(&registry, &settings).await.expect("closed");
        assert!(closed.contains("PCR 2 is"), "{closed}");
        assert!(!closed.contains("PCR 4"), "{closed}");

        for (body, wanted) in [
            (
                PolicyBody {
                    revoke: vec![stage_four.clone()],
                    from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
                "revoke: only with merge",
            ),
            (
                PolicyBody {
                    merge: true,
                    bank: Some("sha1".into()),
                    ..PolicyBody::default()
                },
                "merging into it cannot change its bank",
            ),
            (
                PolicyBody {
                    merge: true,
                    revoke: vec!["ab".repeat(32)],
                    ..PolicyBody::default()
                },
                "is not among the policy's allowed measurements",
            ),
            (
                PolicyBody {
                    measure: Some(vec![4]),
                    from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
                "allow: PCR 4 is judged by its events, and no digest is allowed in it",
            ),
            (
                PolicyBody {
                    measure: Some(vec![4, 10]),
                    allow_from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
                "measure: PCR 10 is not one the boot's event log accounts for",
            ),
            (
                PolicyBody {
                    measure: Some(vec![5]),
                    allow_from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
                "did not cover PCR 5",
            ),
        ] {
            let e = registry
                .set_attestation_policy("gateway", body)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(wanted), "{e}");
        }
    }

    #[tokio::test]
    async fn a_pass_is_judged_again_under_the_policy_its_device_is_held_to_now() {
        let (_dir, registry) = gateway().await;
        let settings = AttestationSettings::default();
        let pem = String::from_utf8(fixture("ak-ecc.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrol");
        let with_log = Evidence {
            event_log: Some(
                base64::engine::general_purpose::STANDARD.encode(fixture_boot_log("boot stage 4")),
            ),
            ..evidence()
        };
        let attest = |evidence: Evidence| {
            registry.open_challenge("gw-1", nonce());
            let registry = &registry;
            async move {
                registry
                    .attest("gw-1", &evidence, true)
                    .await
                    .expect("attest")
            }
        };
        let set = |device_type: &'static str, body: PolicyBody| {
            let registry = &registry;
            async move { registry.set_attestation_policy(device_type, body).await }
        };
        let merge = |device_type: &'static str, body: PolicyBody| {
            set(
                device_type,
                PolicyBody {
                    merge: true,
                    ..body
                },
            )
        };
        attest(evidence()).await;
        let values = set(
            "gateway",
            PolicyBody {
                from_device: Some("gw-1".into()),
                ..PolicyBody::default()
            },
        )
        .await
        .expect("policy");
        // A quote without its log passes a policy of values, and says which version judged it.
        let bare = attest(evidence()).await;
        assert!(bare.passed, "{bare:?}");
        assert_eq!(bare.policy_updated_at, Some(values.updated_at));
        assert_eq!(gate(&registry, &settings).await, None);

        // Merging needs a policy to merge into.
        let absent = merge(
            "sensor",
            PolicyBody {
                require_event_log: Some(true),
                ..PolicyBody::default()
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(absent, RegistryError::Absent(_)), "{absent:?}");
        assert!(
            absent
                .to_string()
                .contains("`sensor` has no attestation policy to merge into"),
            "{absent}"
        );

        // Requiring the log ends the pass of a quote that came without one, before the next.
        let required = merge(
            "gateway",
            PolicyBody {
                require_event_log: Some(true),
                ..PolicyBody::default()
            },
        )
        .await
        .expect("merged");
        assert!(required.updated_at > values.updated_at);
        let closed = gate(&registry, &settings).await.expect("closed");
        assert!(closed.contains("requires the boot's event log"), "{closed}");
        assert!(attest(with_log.clone()).await.passed);
        assert_eq!(gate(&registry, &settings).await, None);

        // Another type allows another boot loader. Its policy is older than the device's next
        // verdict, yet that verdict was judged under `gateway`'s: moved there, the device is
        // held to `sensor`'s digests at once.
        let learned = set(
            "sensor",
            PolicyBody {
                measure: Some(vec![0, 4, 7]),
                allow_from_device: Some("gw-1".into()),
                ..PolicyBody::default()
            },
        )
        .await
        .expect("sensor policy");
        let stage_four = learned.allowed[1].digest.clone();
        merge(
            "sensor",
            PolicyBody {
                revoke: vec![stage_four.clone()],
                allow: vec![AllowInput {
                    pcr: 4,
                    digest: "ab".repeat(32),
                    note: Some("the sensor's own loader".into()),
                }],
                ..PolicyBody::default()
            },
        )
        .await
        .expect("sensor's loader");
        assert!(attest(with_log.clone()).await.passed);
        let to = |device_type: &str| DevicePatch {
            device_type: Some(device_type.into()),
            ..DevicePatch::default()
        };
        registry.patch("gw-1", to("sensor")).await.expect("patch");
        let closed = gate(&registry, &settings).await.expect("closed");
        assert!(
            closed.contains(&format!(
                "measured {stage_four}, which the policy of type `sensor` does not allow"
            )),
            "{closed}"
        );
        // Asked again (from the verdict judged once more, not re-read), and moved back.
        assert_eq!(gate(&registry, &settings).await, Some(closed));
        registry.patch("gw-1", to("gateway")).await.expect("patch");
        assert_eq!(gate(&registry, &settings).await, None);

        // A merge does not stop judging a PCR by its events while it has allowed digests;
        // revoking them in the same change does.
        merge(
            "gateway",
            PolicyBody {
                measure: Some(vec![0, 4, 7]),
                allow_from_device: Some("gw-1".into()),
                ..PolicyBody::default()
            },
        )
        .await
        .expect("measured");
        let narrowed = merge(
            "gateway",
            PolicyBody {
                measure: Some(vec![0, 7]),
                ..PolicyBody::default()
            },
        )
        .await
        .unwrap_err();
        assert!(
            narrowed
                .to_string()
                .starts_with("measure: PCR 4 of the policy of `gateway` has 1 allowed digest;"),
            "{narrowed}"
        );
        let narrowed = merge(
            "gateway",
            PolicyBody {
                measure: Some(vec![0, 7]),
                revoke: vec![stage_four.clone()],
                ..PolicyBody::default()
            },
        )
        .await
        .expect("narrowed");
        assert_eq!(narrowed.measured_pcrs, vec![0, 7]);
        assert_eq!(
            narrowed.allowed.iter().map(|m| m.pcr).collect::<Vec<_>>(),
            vec![0, 7]
        );
        // PCR 0 left with no allowed digest: a withdrawal, and the pass ends.
        let pcr_zero = narrowed.allowed[0].digest.clone();
        merge(
            "gateway",
            PolicyBody {
                revoke: vec![pcr_zero],
                ..PolicyBody::default()
            },
        )
        .await
        .expect("withdrawn");
        let closed = gate(&registry, &settings).await.expect("closed");
        assert!(closed.contains("PCR 0 event "), "{closed}");

        // Two merges at once: neither change is lost.
        let allow_in_seven = |digest: String| PolicyBody {
            allow: vec![AllowInput {
                pcr: 7,
                digest,
                note: None,
            }],
            ..PolicyBody::default()
        };
        let (one, two) = tokio::join!(
            merge("gateway", allow_in_seven("11".repeat(32))),
            merge("gateway", allow_in_seven("22".repeat(32)))
        );
        one.expect("one merge");
        two.expect("the other merge");
        let both = registry
            .attestation_policy("gateway")
            .await
            .expect("read")
            .expect("policy");
        for digest in ["11".repeat(32), "22".repeat(32)] {
            assert!(
                both.allowed
                    .iter()
                    .any(|m| m.pcr == 7 && m.digest == digest),
                "{digest} lost: {:?}",
                both.allowed
            );
        }
    }

    #[tokio::test]
    async fn every_device_must_attest_when_required_and_bad_input_is_named() {
        let (_dir, registry) = gateway().await;
        let required = AttestationSettings {
            required: true,
            ..AttestationSettings::default()
        };
        let reason = gate(&registry, &required).await;
        assert!(
            reason
                .expect("closed")
                .contains("no attestation key is enrolled")
        );
        let e = registry
            .attest("gw-1", &evidence(), true)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no enrolled attestation key"), "{e}");
        let e = registry
            .enrol_attestation_key("gw-1", "not a key")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not PEM"), "{e}");
        let pem = String::from_utf8(fixture("ak-ecc.pem")).expect("utf-8");
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrol");
        let mut bad = evidence();
        bad.quote = "%%%".into();
        let e = registry.attest("gw-1", &bad, true).await.unwrap_err();
        assert!(e.to_string().starts_with("quote: not base64"), "{e}");
        let mut bad = evidence();
        bad.nonce = "é1".into();
        let e = registry.attest("gw-1", &bad, true).await.unwrap_err();
        assert!(e.to_string().contains("nonce: `é1` is not hex"), "{e}");
        for (body, wanted) in [
            (
                PolicyBody {
                    accept: vec![[("24".to_owned(), "00".repeat(32))].into()],
                    ..PolicyBody::default()
                },
                "accept[0].24: not a PCR index",
            ),
            (
                PolicyBody {
                    accept: vec![[("4".to_owned(), "00".repeat(20))].into()],
                    ..PolicyBody::default()
                },
                "accept[0].4: 20 bytes; a sha256 PCR holds 32",
            ),
            (PolicyBody::default(), "accept: give at least one set"),
            (
                PolicyBody {
                    from_device: Some("gw-1".into()),
                    ..PolicyBody::default()
                },
                "`gw-1` has sent no authentic quote",
            ),
        ] {
            let e = registry
                .set_attestation_policy("gateway", body)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(wanted), "{e}");
        }
    }
}
