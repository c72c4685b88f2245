//! `/api/v1/compliance`: evidence for a security review, assessed from what this process runs
//! with — its configuration and the live state of users and the audit chain — against the
//! IEC 62443-3-3 system requirements, the NIST SP 800-53 controls and the GDPR articles Fabrik
//! addresses. Each control says `met`, `partial` or `not_met`, with the evidence found and the
//! gaps; nothing is claimed that this process cannot see.

use axum::Json;
use axum::extract::State;
use fabrik_registry::{AuditVerification, Role};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;

/// What the process was configured with, gathered once at start by the binary.
#[derive(Debug, Clone, Default)]
pub struct ComplianceFacts {
    /// MQTT over plain TCP is open.
    pub mqtt_plain_listener: bool,
    /// MQTT over TLS is open.
    pub mqtt_tls_listener: bool,
    /// Client certificates on the MQTT TLS listener are checked against a CA (mTLS).
    pub mqtt_client_ca: bool,
    /// TLS clients without a certificate are refused.
    pub mqtt_client_certificate_required: bool,
    /// Clients may connect without credentials (protocol test suites only).
    pub mqtt_anonymous: bool,
    /// Whether the MQTT endpoint runs in this process.
    pub mqtt_runs_here: bool,
    /// The HTTP API and dashboard are served over TLS (`http.tls`).
    pub http_tls: bool,
    /// With a certificate Fabrik generated (clients trust its file) rather than one given.
    pub http_generated_certificate: bool,
    /// Configured connections that carry data or credentials in clear (bridges, notifiers,
    /// OPC UA without security, Modbus), one phrase each.
    pub clear_text_links: Vec<String>,
    /// `[[mqtt.acl]]` rules configured (0: the built-in rules).
    pub mqtt_acl_rules: usize,
    /// Device points declared writable (`writable = true`) where their connector runs here.
    pub writable_points: usize,
    /// Of those, the Modbus points (Modbus TCP has no authentication of its own).
    pub writable_modbus_points: usize,
    /// ONNX models load only when signed by a trusted key.
    pub models_signature_required: bool,
    /// Trusted model-signing keys.
    pub models_trusted_keys: usize,
    /// The release repository (TUF) this node installs models from (`[updates] url`), if any.
    pub release_repository: Option<String>,
    /// This node installs the Fabrik binary published for it (`[updates] binary`).
    pub binary_updates: bool,
    /// Failed runs of a new binary that has not confirmed itself before the node puts the
    /// previous one back (`[updates] rollback_after_failed_runs`; 0: never).
    pub binary_rollback_after_failed_runs: u32,
    /// Tables kept forever (`*` for the default retention).
    pub tables_kept_forever: Vec<String>,
    /// Retention of raw messages, as configured (`None`: not kept).
    pub raw_retention: Option<String>,
    /// How long resolved alerts, with their acknowledgements, are kept (`alerting.retention`:
    /// a duration or `forever`).
    pub alert_retention: String,
    /// Where the admin token comes from: the environment or configuration, or a file.
    pub admin_token_source: String,
    /// The token file's permission bits, when the token is read from a file.
    pub admin_token_file_mode: Option<u32>,
    /// Whether the process log keeps the audit lines (`fabrik::audit` at info), as the
    /// installed log filter answers.
    pub audit_lines_logged: bool,
    /// `[attestation] required`: every device must attest to connect.
    pub attestation_required: bool,
    /// `[attestation] require_endorsement`: attestation keys only through EK certificates of
    /// trusted TPM vendors.
    pub attestation_endorsed: bool,
    /// Where `[openlineage]` reports the jobs that process the data (a catalog's URL, a
    /// file), if anywhere (decision 0080).
    pub lineage_to: Option<String>,
}

/// How far a control is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlStatus {
    /// Everything the control asks of Fabrik is in place.
    Met,
    /// Part of it is; `gaps` says what is not.
    Partial,
    /// It is not.
    NotMet,
}

/// One control, assessed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ControlAssessment {
    /// IEC 62443-3-3 system requirements (`SR 1.1`), NIST SP 800-53 controls (`IA-2`) or GDPR
    /// articles (`GDPR Art. 32`).
    pub references: Vec<String>,
    /// What the control is about.
    pub title: String,
    /// Met, partial or not met.
    pub status: ControlStatus,
    /// What was found, as facts that can be checked.
    pub evidence: Vec<String>,
    /// What is missing, and what to do about it.
    pub gaps: Vec<String>,
}

/// The report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ComplianceReport {
    /// When it was made (ns since the epoch).
    pub time: i64,
    /// Controls met, partial, not met.
    pub met: usize,
    /// Partly met.
    pub partial: usize,
    /// Not met.
    pub not_met: usize,
    /// Every control assessed.
    pub controls: Vec<ControlAssessment>,
}

/// The live state an assessment reads besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct LiveState {
    /// Users per role (admin, operator, viewer); `None` when the registry runs elsewhere.
    pub users: Option<[usize; 3]>,
    /// The audit chain's check; `None` when the registry runs elsewhere.
    pub audit: Option<AuditVerification>,
    /// Devices with an enrolled TPM attestation key, and devices in all; `None` when the
    /// registry runs elsewhere.
    pub attestation: Option<(usize, usize)>,
    /// Device types with a runtime policy (IMA, decision 0067); `None` when the registry runs
    /// elsewhere.
    pub runtime_policies: Option<usize>,
    /// Whether this node's keys for encrypted targets are sealed to its TPM (decision 0070);
    /// `None` when it follows no release repository, or its keys did not open.
    pub node_key_sealed: Option<bool>,
    /// The PCRs its sealed keys are bound to (decision 0071), if any.
    pub node_key_sealed_pcrs: Option<String>,
    /// How many targets keys must sign a release, of how many (decision 0075); `None` until
    /// the release repository verified, or when the node follows none.
    pub release_signers: Option<(u64, u64)>,
    /// How many root keys must sign a new root of the release repository, of how many
    /// (decision 0088); `None` as for `release_signers`.
    pub release_root_keys: Option<(u64, u64)>,
}

fn control(
    references: &[&str],
    title: &str,
    evidence: Vec<String>,
    gaps: Vec<String>,
    met: bool,
) -> ControlAssessment {
    let status = if gaps.is_empty() {
        ControlStatus::Met
    } else if met {
        ControlStatus::Partial
    } else {
        ControlStatus::NotMet
    };
    ControlAssessment {
        references: references.iter().map(|r| (*r).to_owned()).collect(),
        title: title.to_owned(),
        status,
        evidence,
        gaps,
    }
}

/// Assesses every control from the configuration and the live state. `met` in
/// [`control`] says whether, with gaps, the control is still partly met.
pub fn assess(facts: &ComplianceFacts, live: &LiveState) -> Vec<ControlAssessment> {
    let mut controls = Vec::new();

    // People.
    let mut evidence = vec![format!(
        "the admin token, a credential shared by whoever holds it, comes from {}; it is \
         compared in constant time and kept out of URLs (InfluxDB 1.x `/write` excepted)",
        facts.admin_token_source
    )];
    let mut gaps = Vec::new();
    if let Some(mode) = facts.admin_token_file_mode
        && mode & 0o077 != 0
    {
        gaps.push(format!(
            "the admin token file is readable by others (mode {mode:o}): `chmod 600` it"
        ));
    }
    match live.users {
        Some([admins, operators, viewers]) => {
            evidence.push(format!(
                "{admins} admin(s), {operators} operator(s), {viewers} viewer(s) sign in by \
                 name with argon2id-hashed passwords of at least 12 characters; sessions last \
                 12 h"
            ));
            if admins + operators + viewers == 0 {
                gaps.push(
                    "no users: everyone shares the admin token and the audit log cannot tell \
                     people apart (`fabrik user add NAME --role ROLE`)"
                        .to_owned(),
                );
            } else if admins == 0 {
                gaps.push(
                    "no admin users: every change is made with the shared admin token, which \
                     the audit log cannot tie to a person (`fabrik user add NAME --role admin`)"
                        .to_owned(),
                );
            }
        }
        None => gaps.push("the registry (users) runs in another process".to_owned()),
    }
    controls.push(control(
        &["IEC 62443-3-3 SR 1.1", "SR 1.3", "NIST 800-53 IA-2", "AC-2"],
        "Human user identification and authentication",
        evidence,
        gaps,
        true,
    ));

    controls.push(control(
        &["IEC 62443-3-3 SR 1.11", "NIST 800-53 AC-7"],
        "Unsuccessful login attempts",
        vec![format!(
            "{} wrong passwords in a row lock a user's name for {} s (429); refused sign-ins \
             are recorded in the audit log, ten per actor and kind in ten minutes (all unknown \
             names are one actor), the rest summed",
            fabrik_registry::users::MAX_FAILED_SIGN_INS,
            fabrik_registry::users::LOCKOUT.as_secs()
        )],
        vec![
            "tokens (the admin token, device tokens) have no limit on failed attempts; a \
             wrong token on an API route is counted (fabrik_http_unauthorized_total), not \
             audited"
                .to_owned(),
        ],
        true,
    ));

    // Devices.
    let mut evidence = vec![
        "each device has its own random token, stored as an argon2id hash, rotatable \
         (`fabrik device rotate-token`)"
            .to_owned(),
    ];
    let mut gaps = Vec::new();
    if facts.mqtt_runs_here && facts.mqtt_tls_listener && facts.mqtt_client_ca {
        evidence.push(format!(
            "MQTT over TLS checks client certificates against the configured CA (mTLS){}",
            if facts.mqtt_client_certificate_required {
                " and refuses clients without one"
            } else {
                "; clients without one may still use a token"
            }
        ));
    }
    if facts.mqtt_anonymous {
        gaps.push(
            "mqtt.allow_anonymous is on: any client connects without credentials and uses \
             every topic (for protocol test suites only)"
                .to_owned(),
        );
    }
    if facts.attestation_required {
        evidence.push(
            "[attestation] required: every device connects only with a current passing TPM \
             2.0 quote (signed by its enrolled attestation key, answering a one-time nonce, \
             its PCRs equal to its type's reference values)"
                .to_owned(),
        );
    } else {
        match live.attestation {
            Some((enrolled, total)) if enrolled > 0 => {
                evidence.push(format!(
                    "{enrolled} of {total} device(s) have an enrolled TPM attestation key and \
                     connect only with a current passing quote of their boot state"
                ));
                if enrolled < total {
                    gaps.push(format!(
                        "{} device(s) connect without attestation: enrol their TPM keys \
                         (`fabrik device attestation enrol`) or set [attestation] required",
                        total - enrolled
                    ));
                }
            }
            Some((_, total)) if total > 0 => gaps.push(
                "no device attests its boot state: enrol devices' TPM keys (`fabrik device \
                 attestation enrol`) or set [attestation] required"
                    .to_owned(),
            ),
            _ => {}
        }
    }
    if let Some(types) = live.runtime_policies.filter(|types| *types > 0) {
        evidence.push(format!(
            "{types} device type(s) hold what their devices run after the boot to a runtime \
             policy: every file the kernel's IMA measured, replayed to the quoted PCR 10, must \
             be an allowed digest of its path (decision 0067)"
        ));
    }
    if facts.attestation_endorsed {
        evidence.push(
            "[attestation] require_endorsement: an attestation key counts only when the \
             device's TPM activated it through an endorsement key whose certificate a trusted \
             TPM vendor CA issued (hardware identity, decision 0053)"
                .to_owned(),
        );
    }
    controls.push(control(
        &["IEC 62443-3-3 SR 1.2", "SR 1.5", "NIST 800-53 IA-3", "IA-5"],
        "Device identification and authentication",
        evidence,
        gaps,
        !facts.mqtt_anonymous,
    ));

    // Authorisation.
    let mut evidence = vec![
        "API routes need a role (viewer reads, operator acknowledges and silences, admin \
         changes); a refusal is 403 naming the role, and is audited"
            .to_owned(),
    ];
    let mut gaps = Vec::new();
    if facts.mqtt_runs_here {
        if facts.mqtt_anonymous {
            gaps.push("MQTT topic ACLs are bypassed by anonymous clients".to_owned());
        } else if facts.mqtt_acl_rules == 0 {
            evidence.push(
                "MQTT topic ACLs deny by default, with the built-in rules: a device publishes \
                 under devices/<its id>/ and reads its own commands only"
                    .to_owned(),
            );
        } else {
            evidence.push(format!(
                "MQTT topic ACLs deny what no rule allows; {} configured [[mqtt.acl]] rule(s) \
                 replace the built-in ones",
                facts.mqtt_acl_rules
            ));
            gaps.push(
                "the configured ACL rules are not assessed here: review that each allows a \
                 device only its own topics"
                    .to_owned(),
            );
        }
    }
    if facts.writable_points == 0 {
        evidence.push(
            "no device point is declared writable: Fabrik writes nothing to devices".to_owned(),
        );
    } else {
        evidence.push(format!(
            "writes to devices: only the {} point(s) declared writable, by operators and \
             admins, within each point's declared range (text: at most 1000 characters); \
             every write is in the audit log with its value and in `_device_writes` with what \
             the device read back",
            facts.writable_points
        ));
        if facts.writable_modbus_points > 0 {
            gaps.push(
                "Modbus TCP has no authentication of its own: the writable registers can be \
                 written by any host that reaches the device, not only through Fabrik; keep \
                 the devices on a network zone Fabrik alone reaches (IEC 62443-3-3 SR 5.1)"
                    .to_owned(),
            );
        }
    }
    controls.push(control(
        &["IEC 62443-3-3 SR 2.1", "NIST 800-53 AC-3", "AC-6"],
        "Authorisation enforcement and least privilege",
        evidence,
        gaps,
        true,
    ));

    // Audit.
    let mut evidence = Vec::new();
    let mut gaps = Vec::new();
    let mut partly = true;
    match &live.audit {
        Some(check) if check.intact => {
            evidence.push(format!(
                "the audit log's HMAC-SHA256 chain verifies: {} entries, head #{} {}",
                check.entries, check.head_seq, check.head_hash
            ));
            if check.erased_entries > 0 {
                evidence.push(format!(
                    "{} entries name an erased person; each still verifies through the salted \
                     digests of its names and the erasure entry that vouches for it",
                    check.erased_entries
                ));
            }
            if check.unverifiable_entries > 0 {
                gaps.push(format!(
                    "entries written before names were hashed as salted digests (audit format \
                     1) that lost a name to an erasure: {}; their own hash can no longer be \
                     recomputed, only the chain links around them",
                    check.unverifiable_entries
                ));
            }
        }
        Some(check) => {
            partly = false;
            gaps.push(format!(
                "the audit chain is broken: {} of {} entries do not fit, the first at #{}: {}",
                check.broken_entries,
                check.entries,
                check.broken_at.unwrap_or_default(),
                check.problem.as_deref().unwrap_or("?")
            ));
        }
        None => {
            partly = false;
            gaps.push("the registry runs in another process: this API records nothing".to_owned());
        }
    }
    if !facts.audit_lines_logged {
        gaps.push(
            "the log filter drops the audit lines (target fabrik::audit, info) that keep a \
             copy of the chain's head off the machine"
                .to_owned(),
        );
    }
    controls.push(control(
        &[
            "IEC 62443-3-3 SR 2.8",
            "SR 2.9",
            "SR 3.9",
            "NIST 800-53 AU-2",
            "AU-3",
            "AU-9",
        ],
        "Auditable events and protection of audit information",
        evidence,
        gaps,
        partly,
    ));

    // Transport.
    let mut evidence = Vec::new();
    let mut gaps = Vec::new();
    if facts.http_tls {
        evidence.push(if facts.http_generated_certificate {
            "the HTTP API and dashboard are served over TLS (rustls, http.tls) with a generated \
             self-signed certificate, which clients trust by its file"
                .into()
        } else {
            "the HTTP API and dashboard are served over TLS (rustls, http.tls) with the \
             configured certificate"
                .into()
        });
    } else {
        gaps.push(
            "the HTTP API and dashboard are served over plain HTTP: tokens, passwords and data \
             cross the network readable (set http.tls = true, or put a TLS-terminating proxy \
             in front)"
                .to_owned(),
        );
    }
    gaps.extend(facts.clear_text_links.iter().cloned());
    if facts.mqtt_runs_here {
        if facts.mqtt_tls_listener {
            evidence.push("MQTT over TLS (rustls) is open".to_owned());
        }
        if facts.mqtt_plain_listener {
            gaps.push(
                "MQTT over plain TCP is open (mqtt.listen): credentials and data cross the \
                 network readable"
                    .to_owned(),
            );
        }
    }
    controls.push(control(
        &[
            "IEC 62443-3-3 SR 3.1",
            "SR 4.1",
            "NIST 800-53 SC-8",
            "GDPR Art. 32",
        ],
        "Communication integrity and confidentiality",
        evidence.clone(),
        gaps,
        !evidence.is_empty(),
    ));

    // Model integrity.
    let (evidence, gaps) = if facts.models_signature_required {
        (
            vec![format!(
                "ONNX models load only when signed (Ed25519) by one of {} trusted key(s); \
                 checked at upload, definition and every start",
                facts.models_trusted_keys
            )],
            Vec::new(),
        )
    } else {
        (
            vec!["a model whose signature does not verify is refused".to_owned()],
            vec![
                "unsigned ONNX models load: set [models] trusted_keys (`fabrik model \
                 keygen`, `fabrik model sign`)"
                    .to_owned(),
            ],
        )
    };
    let (mut evidence, mut gaps) = (evidence, gaps);
    if let Some(repository) = &facts.release_repository {
        evidence.push(format!(
            "models arrive from the release repository {repository}, verified with TUF \
             (signed metadata from a pinned root, no rollback, no expired metadata, each \
             file's signed hash) before they are stored; a target encrypted to this node's \
             key (age, X25519) is decrypted only after that, and checked against its signed \
             content hash"
        ));
        match live.release_signers {
            Some((threshold, keys)) if threshold >= 2 => evidence.push(format!(
                "each release is signed by {threshold} of {keys} publishers' keys before this \
                 node accepts it: no one holder of a targets key can publish to it alone, and \
                 changing who those are needs the same quorum besides the root keys, which \
                 should be held apart from them (decision 0075)"
            )),
            Some((threshold, keys)) => evidence.push(format!(
                "each release is signed by {threshold} of {keys} publishers' keys: one person \
                 can publish to this node (`fabrik release signers --threshold 2` makes it \
                 two, decision 0075)"
            )),
            None => {}
        }
        if let Some((threshold, keys)) = live.release_root_keys {
            evidence.push(format!(
                "the release repository's root is signed by {threshold} of {keys} root keys{}{} \
                 (decision 0088)",
                if threshold >= 2 {
                    ": no one holder can change whom nodes trust"
                } else if keys >= 2 {
                    ": any one holder can change whom nodes trust alone"
                } else {
                    ""
                },
                if keys > threshold {
                    "; a lost root key is replaced by the other holders, and nodes follow the \
                     new root from the one they hold"
                } else {
                    "; losing a root key means giving every node a new root by hand (`fabrik \
                     release root-keys --add` lists more)"
                }
            ));
        }
        match live.node_key_sealed {
            Some(true) => evidence.push(format!(
                "this node's keys for encrypted targets are sealed to its TPM: a copy of its \
                 disk opens no model published to it (decision 0070){}",
                live.node_key_sealed_pcrs
                    .as_ref()
                    .map(|pcrs| format!(
                        "; and to its boot (PCRs {pcrs}): booted with other values in those \
                         PCRs, the device itself does not open the file either, though a copy \
                         sealed before without them would (decision 0071)"
                    ))
                    .unwrap_or_default()
            )),
            Some(false) => gaps.push(
                "this node's keys for encrypted targets are a file on its disk, which a copy of \
                 the disk carries away: `fabrik updates seal-key` seals them to its TPM"
                    .to_owned(),
            ),
            None => {}
        }
        if facts.binary_updates {
            evidence.push(
                "the Fabrik binary arrives the same way, and is tried on this node (`config \
                 check` of the configuration file it runs with, or `--version` when it runs \
                 without one) before it replaces the running one, which is kept for `fabrik \
                 updates rollback`"
                    .to_owned(),
            );
            if facts.binary_rollback_after_failed_runs > 0 {
                evidence.push(format!(
                    "a new binary that fails {} run(s) (a crash, a kill, an error) before it \
                     has confirmed itself by running with every module up is put back by the \
                     node, which restarts into the previous one (decision 0066)",
                    facts.binary_rollback_after_failed_runs
                ));
            } else {
                gaps.push(
                    "a new binary that keeps failing is not rolled back by the node ([updates] \
                     rollback_after_failed_runs = 0): an operator must run `fabrik updates \
                     rollback`"
                        .to_owned(),
                );
            }
        }
    }
    controls.push(control(
        &[
            "IEC 62443-3-3 SR 3.4",
            "NIST 800-53 SI-7",
            "CM-14",
            "CM-5(4)",
        ],
        "Software and information integrity of models",
        evidence,
        gaps,
        false,
    ));

    // Personal data.
    let mut evidence = vec![format!(
        "raw messages are kept {}",
        facts
            .raw_retention
            .as_deref()
            .map_or_else(|| "not at all".to_owned(), |r| format!("for {r}"))
    )];
    let mut gaps = Vec::new();
    if facts.tables_kept_forever.is_empty() {
        evidence.push("every table of the store has a finite retention".to_owned());
    } else {
        gaps.push(format!(
            "kept forever: {} (`*` is the default retention); set store.retention or \
             [store.tables.NAME] retention for data about people",
            facts.tables_kept_forever.join(", ")
        ));
    }
    evidence.push(
        "personal data: user names and roles (registry), the names in the audit log, \
         acknowledgements' operators and comments, silences' authors"
            .to_owned(),
    );
    if facts.alert_retention == "forever" {
        gaps.push(
            "resolved alerts, with the names and comments of their acknowledgements, are kept \
             forever (alerting.retention)"
                .to_owned(),
        );
    } else {
        evidence.push(format!(
            "resolved alerts, with their acknowledgements, are kept {} after their last \
             change; silences 30 days after they end",
            facts.alert_retention
        ));
    }
    gaps.push(
        "the audit log and the users are kept until removed: they have no retention".to_owned(),
    );
    evidence.push(
        "what is kept about one person can be exported (GET /api/v1/people/{name}, \
         `fabrik privacy export`, audited): user, audit entries by and about them, use cases, \
         stage decisions, acknowledgements, silences, alert labels"
            .to_owned(),
    );
    evidence.push(
        "one person's data can be erased (DELETE /api/v1/people/{name}, `fabrik privacy erase`, \
         audited without the name): their user and sessions; their name in audit entries, \
         stage decisions, use cases, acknowledgements, silences and alert labels is replaced \
         by \"(erased)\" and their comments dropped, with the audit chain still verifying; \
         freed database pages are overwritten"
            .to_owned(),
    );
    gaps.push(
        "erasure does not reach the process log, audit logs set aside after a key change, \
         copies already sent upstream, or names written in free text (stage-decision reasons, \
         use case descriptions, other people's comments)"
            .to_owned(),
    );
    // A record of processing activities (Art. 30) needs to know what processes the data and
    // where it goes: the lineage events say it per job, kept outside this node.
    match &facts.lineage_to {
        Some(to) => evidence.push(format!(
            "the jobs that process the data are reported as OpenLineage runs to {to}: which \
             pipelines read which tables, the models each device learnt and from which span, \
             the alert rules, which data each use case's KPIs are computed from, and (on a \
             hub) which edge's tables feed it"
        )),
        None => gaps.push(
            "no lineage catalog receives the processing activities ([openlineage]): the \
             record of what processes which data is the configuration alone"
                .to_owned(),
        ),
    }
    controls.push(control(
        &[
            "GDPR Art. 5(1)(e)",
            "Art. 17",
            "Art. 30",
            "NIST 800-53 SI-12",
        ],
        "Storage limitation and the rights of the people in the data",
        evidence,
        gaps,
        true,
    ));
    controls
}

#[utoipa::path(get, path = "/api/v1/compliance", tag = "security",
    responses((status = 200, description = "the controls assessed from this process's configuration and live state", body = ComplianceReport),
              (status = 403, description = "not an admin", body = crate::error::ErrorBody)))]
pub(crate) async fn report(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<ComplianceReport>, ApiError> {
    let live = match &state.registry {
        Some(registry) => {
            let mut users = [0; 3];
            for user in registry.users().await? {
                let slot = match user.role {
                    Role::Admin => 0,
                    Role::Operator => 1,
                    Role::Viewer => 2,
                };
                users[slot] += 1;
            }
            LiveState {
                users: Some(users),
                audit: Some(registry.verify_audit().await?),
                attestation: Some(registry.attestation_coverage().await?),
                runtime_policies: Some(registry.runtime_policy_count().await?),
                node_key_sealed: None,
                node_key_sealed_pcrs: None,
                release_signers: None,
                release_root_keys: None,
            }
        }
        None => LiveState::default(),
    };
    let (node_key_sealed, node_key_sealed_pcrs) = state
        .updates
        .read()
        .as_ref()
        // Keys that did not open say nothing of how they are kept.
        .filter(|status| status.key_error.is_none())
        .map_or((None, None), |status| {
            (Some(status.key_sealed), status.key_sealed_pcrs.clone())
        });
    // Both known once the release repository verified (a threshold is never 0 then).
    let (release_signers, release_root_keys) =
        state
            .updates
            .read()
            .as_ref()
            .map_or((None, None), |status| {
                (
                    (status.targets_threshold > 0)
                        .then_some((status.targets_threshold, status.targets_keys)),
                    (status.root_threshold > 0)
                        .then_some((status.root_threshold, status.root_keys)),
                )
            });
    let live = LiveState {
        node_key_sealed,
        node_key_sealed_pcrs,
        release_signers,
        release_root_keys,
        ..live
    };
    let controls = assess(&state.compliance, &live);
    let count = |status| controls.iter().filter(|c| c.status == status).count();
    Ok(Json(ComplianceReport {
        time: fabrik_core::Timestamp::now().nanos(),
        met: count(ControlStatus::Met),
        partial: count(ControlStatus::Partial),
        not_met: count(ControlStatus::NotMet),
        controls,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intact() -> AuditVerification {
        AuditVerification {
            intact: true,
            entries: 3,
            head_seq: 3,
            head_hash: "ab".into(),
            broken_at: None,
            problem: None,
            breaks: Vec::new(),
            broken_entries: 0,
            erased_entries: 0,
            unverifiable_entries: 0,
        }
    }

    fn control_of<'a>(controls: &'a [ControlAssessment], reference: &str) -> &'a ControlAssessment {
        controls
            .iter()
            .find(|c| c.references.iter().any(|r| r == reference))
            .expect("control")
    }

    fn status_of(controls: &[ControlAssessment], reference: &str) -> ControlStatus {
        control_of(controls, reference).status
    }

    #[test]
    fn binary_rollback_and_runtime_policies_are_evidence() {
        let mut facts = ComplianceFacts {
            release_repository: Some("https://hub:7800/tuf".into()),
            binary_updates: true,
            binary_rollback_after_failed_runs: 3,
            ..ComplianceFacts::default()
        };
        let mut live = LiveState {
            attestation: Some((2, 2)),
            runtime_policies: Some(1),
            users: Some([1, 0, 0]),
            audit: Some(intact()),
            node_key_sealed: Some(true),
            node_key_sealed_pcrs: None,
            release_signers: None,
            release_root_keys: None,
        };
        let controls = assess(&facts, &live);
        let models = control_of(&controls, "NIST 800-53 SI-7");
        assert!(
            models
                .evidence
                .iter()
                .any(|e| e.contains("fails 3 run(s)") && e.contains("put back by the node")),
            "{:?}",
            models.evidence
        );
        assert!(
            models
                .evidence
                .iter()
                .any(|e| e.contains("sealed to its TPM")),
            "{:?}",
            models.evidence
        );
        live.node_key_sealed = Some(false);
        let unsealed = assess(&facts, &live);
        assert!(
            control_of(&unsealed, "NIST 800-53 SI-7")
                .gaps
                .iter()
                .any(|g| g.contains("fabrik updates seal-key")),
            "{unsealed:?}"
        );
        live.node_key_sealed = Some(true);
        for (root_keys, expected) in [
            (
                (2, 3),
                "no one holder can change whom nodes trust; a lost root key is replaced",
            ),
            (
                (1, 1),
                "1 of 1 root keys; losing a root key means giving every node a new root",
            ),
        ] {
            live.release_root_keys = Some(root_keys);
            let root = assess(&facts, &live);
            assert!(
                control_of(&root, "NIST 800-53 SI-7")
                    .evidence
                    .iter()
                    .any(|e| e.contains(expected)),
                "{root:?}"
            );
        }
        live.node_key_sealed_pcrs = Some("sha256:7".into());
        let bound = assess(&facts, &live);
        assert!(
            control_of(&bound, "NIST 800-53 SI-7")
                .evidence
                .iter()
                .any(|e| e.contains("PCRs sha256:7") && e.contains("0071")),
            "{bound:?}"
        );
        let devices = control_of(&controls, "NIST 800-53 IA-3");
        assert!(
            devices
                .evidence
                .iter()
                .any(|e| e.contains("1 device type(s) hold what their devices run")),
            "{:?}",
            devices.evidence
        );
        facts.binary_rollback_after_failed_runs = 0;
        let controls = assess(&facts, &live);
        let models = control_of(&controls, "NIST 800-53 SI-7");
        assert!(
            models
                .gaps
                .iter()
                .any(|g| g.contains("rollback_after_failed_runs = 0")),
            "{:?}",
            models.gaps
        );
    }

    #[test]
    fn the_status_follows_the_configuration_and_the_audit_chain() {
        let mut facts = ComplianceFacts {
            mqtt_runs_here: true,
            mqtt_plain_listener: true,
            audit_lines_logged: true,
            admin_token_source: "a generated file".into(),
            ..ComplianceFacts::default()
        };
        let live = LiveState {
            attestation: None,
            runtime_policies: None,
            users: Some([1, 0, 2]),
            audit: Some(intact()),
            node_key_sealed: None,
            node_key_sealed_pcrs: None,
            release_signers: None,
            release_root_keys: None,
        };
        let controls = assess(&facts, &live);
        assert_eq!(
            status_of(&controls, "NIST 800-53 SI-7"),
            ControlStatus::NotMet
        );
        assert_eq!(status_of(&controls, "NIST 800-53 AU-2"), ControlStatus::Met);
        assert_eq!(
            status_of(&controls, "NIST 800-53 SC-8"),
            ControlStatus::NotMet
        );
        assert_eq!(status_of(&controls, "NIST 800-53 IA-2"), ControlStatus::Met);

        facts.models_signature_required = true;
        facts.models_trusted_keys = 1;
        facts.mqtt_tls_listener = true;
        facts.admin_token_file_mode = Some(0o644);
        let mut broken = intact();
        broken.intact = false;
        broken.broken_at = Some(2);
        broken.broken_entries = 1;
        let controls = assess(
            &facts,
            &LiveState {
                attestation: None,
                runtime_policies: None,
                users: Some([1, 0, 0]),
                audit: Some(broken),
                node_key_sealed: None,
                node_key_sealed_pcrs: None,
                release_signers: None,
                release_root_keys: None,
            },
        );
        assert_eq!(status_of(&controls, "NIST 800-53 SI-7"), ControlStatus::Met);
        assert_eq!(
            status_of(&controls, "NIST 800-53 AU-2"),
            ControlStatus::NotMet
        );
        assert_eq!(
            status_of(&controls, "NIST 800-53 SC-8"),
            ControlStatus::Partial
        );
        // One admin user, but a token file others can read.
        assert_eq!(
            status_of(&controls, "NIST 800-53 IA-2"),
            ControlStatus::Partial
        );
        assert_eq!(status_of(&controls, "NIST 800-53 AC-3"), ControlStatus::Met);
        // HTTPS too, and MQTT over TLS only: nothing crosses the network in clear.
        facts.http_tls = true;
        facts.mqtt_plain_listener = false;
        let controls = assess(
            &facts,
            &LiveState {
                attestation: None,
                runtime_policies: None,
                users: Some([1, 0, 0]),
                audit: Some(intact()),
                node_key_sealed: None,
                node_key_sealed_pcrs: None,
                release_signers: None,
                release_root_keys: None,
            },
        );
        assert_eq!(status_of(&controls, "NIST 800-53 SC-8"), ControlStatus::Met);
        // A link in clear elsewhere (a Modbus device) keeps it from being met.
        facts.clear_text_links = vec!["1 Modbus TCP device(s)".into()];
        let controls = assess(
            &facts,
            &LiveState {
                attestation: None,
                runtime_policies: None,
                users: Some([1, 0, 0]),
                audit: Some(intact()),
                node_key_sealed: None,
                node_key_sealed_pcrs: None,
                release_signers: None,
                release_root_keys: None,
            },
        );
        assert_eq!(
            status_of(&controls, "NIST 800-53 SC-8"),
            ControlStatus::Partial
        );
        facts.clear_text_links.clear();
        facts.mqtt_plain_listener = true;
        facts.http_tls = false;
        let live = LiveState {
            attestation: None,
            runtime_policies: None,
            users: Some([1, 0, 0]),
            audit: Some(intact()),
            node_key_sealed: None,
            node_key_sealed_pcrs: None,
            release_signers: None,
            release_root_keys: None,
        };
        let ac3 = |facts: &ComplianceFacts| {
            let controls = assess(facts, &live);
            let control = control_of(&controls, "NIST 800-53 AC-3");
            (control.evidence.join(" | "), control.gaps.join(" | "))
        };
        let (evidence, gaps) = ac3(&facts);
        assert!(
            evidence.contains("Fabrik writes nothing to devices"),
            "{evidence}"
        );
        assert!(!gaps.contains("Modbus TCP"), "{gaps}");
        facts.writable_points = 3;
        let (_, gaps) = ac3(&facts);
        assert!(!gaps.contains("Modbus TCP"), "OPC UA items only: {gaps}");
        facts.writable_modbus_points = 1;
        let (evidence, gaps) = ac3(&facts);
        assert!(
            evidence.contains("only the 3 point(s) declared writable"),
            "{evidence}"
        );
        assert!(gaps.contains("Modbus TCP has no authentication"), "{gaps}");
        assert_eq!(
            status_of(&assess(&facts, &live), "NIST 800-53 AC-3"),
            ControlStatus::Partial
        );
        facts.writable_points = 0;
        facts.writable_modbus_points = 0;
        facts.mqtt_acl_rules = 2;
        let controls = assess(&facts, &live);
        assert_eq!(
            status_of(&controls, "NIST 800-53 AC-3"),
            ControlStatus::Partial
        );
        // Viewers only: changes are still the shared token's.
        let viewers_only = LiveState {
            attestation: None,
            runtime_policies: None,
            users: Some([0, 0, 2]),
            audit: Some(intact()),
            node_key_sealed: None,
            node_key_sealed_pcrs: None,
            release_signers: None,
            release_root_keys: None,
        };
        facts.admin_token_file_mode = Some(0o600);
        let gdpr = |facts: &ComplianceFacts| {
            let controls = assess(facts, &viewers_only);
            let control = control_of(&controls, "GDPR Art. 5(1)(e)");
            (control.evidence.join(" | "), control.gaps.join(" | "))
        };
        facts.alert_retention = "365d".into();
        let (evidence, gaps) = gdpr(&facts);
        assert!(
            evidence.contains("kept 365d after their last change"),
            "{evidence}"
        );
        assert!(!gaps.contains("alerting.retention"), "{gaps}");
        facts.alert_retention = "forever".into();
        assert!(gdpr(&facts).1.contains("kept forever (alerting.retention)"));
        assert!(
            evidence.contains("DELETE /api/v1/people/{name}"),
            "{evidence}"
        );
        assert!(gaps.contains("process log"), "{gaps}");
        // The record of processing (Art. 30): a lineage catalog, or the configuration alone.
        assert!(gaps.contains("no lineage catalog"), "{gaps}");
        facts.lineage_to = Some("http://marquez:5000/api/v1/lineage".into());
        let (evidence, gaps) = gdpr(&facts);
        assert!(
            evidence.contains("OpenLineage runs to http://marquez:5000/api/v1/lineage"),
            "{evidence}"
        );
        assert!(!gaps.contains("lineage"), "{gaps}");
        assert!(!gaps.contains("no erasure"), "{gaps}");
        // An erasure shows in the audit control: vouched-for entries as evidence, older
        // entries whose own hash can no longer be checked as a gap.
        let erased = LiveState {
            attestation: None,
            runtime_policies: None,
            users: Some([0, 0, 2]),
            audit: Some(AuditVerification {
                erased_entries: 4,
                unverifiable_entries: 1,
                ..intact()
            }),
            node_key_sealed: None,
            node_key_sealed_pcrs: None,
            release_signers: None,
            release_root_keys: None,
        };
        let controls = assess(&facts, &erased);
        let audit = control_of(&controls, "NIST 800-53 AU-2");
        assert!(
            audit
                .evidence
                .join(" ")
                .contains("4 entries name an erased person")
        );
        assert!(
            audit
                .gaps
                .join(" ")
                .contains("written before names were hashed")
        );
        let controls = assess(&facts, &viewers_only);
        assert_eq!(
            status_of(&controls, "NIST 800-53 IA-2"),
            ControlStatus::Partial
        );

        // Devices' attestation: partial coverage is a gap naming how many connect without.
        let partly = LiveState {
            attestation: Some((2, 5)),
            ..LiveState::default()
        };
        let devices = control_of(&assess(&facts, &partly), "NIST 800-53 IA-3").clone();
        assert!(
            devices
                .evidence
                .join(" ")
                .contains("2 of 5 device(s) have an enrolled TPM")
        );
        assert!(
            devices
                .gaps
                .join(" ")
                .contains("3 device(s) connect without attestation")
        );
        facts.attestation_required = true;
        let devices = control_of(&assess(&facts, &partly), "NIST 800-53 IA-3").clone();
        assert!(
            devices.gaps.iter().all(|g| !g.contains("attestation")),
            "{devices:?}"
        );
        assert!(
            devices
                .evidence
                .join(" ")
                .contains("[attestation] required")
        );
        assert!(!devices.evidence.join(" ").contains("require_endorsement"));
        facts.attestation_endorsed = true;
        let devices = control_of(&assess(&facts, &partly), "NIST 800-53 IA-3").clone();
        assert!(
            devices
                .evidence
                .join(" ")
                .contains("require_endorsement: an attestation key counts only")
        );

        facts.mqtt_anonymous = true;
        let controls = assess(&facts, &LiveState::default());
        assert_eq!(
            status_of(&controls, "NIST 800-53 IA-3"),
            ControlStatus::NotMet
        );
        assert_eq!(
            status_of(&controls, "NIST 800-53 AU-2"),
            ControlStatus::NotMet
        );
        assert_eq!(
            status_of(&controls, "NIST 800-53 IA-2"),
            ControlStatus::Partial
        );
    }
}
