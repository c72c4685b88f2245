//! The OpenAPI document, generated from the handlers' annotations. It is committed as
//! `docs/api/openapi.json`; a test fails when that file is stale (regenerate with
//! `fabrik openapi > docs/api/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct TokenAuth;

/// What every protected operation can answer, declared where a handler's annotation left it
/// out, so generated clients know them: 400 (every endpoint refuses unknown query
/// parameters), 401 (no or a wrong token, or an ended session), and for changes 403 (a role
/// too low). Also declares the token on protected operations that did not say so, and makes
/// the answer schemas that are one of two lists `anyOf`: an empty list is both.
struct CommonAnswers;

/// Paths that answer without a token.
const OPEN_PATHS: [&str; 3] = ["/ready", "/metrics", "/api/v1/session"];

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::HttpMethod;
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if OPEN_PATHS.contains(&path.as_str()) {
                continue;
            }
            for method in [
                HttpMethod::Get,
                HttpMethod::Put,
                HttpMethod::Post,
                HttpMethod::Delete,
                HttpMethod::Patch,
            ] {
                let operation = match method {
                    HttpMethod::Get => item.get.as_mut(),
                    HttpMethod::Put => item.put.as_mut(),
                    HttpMethod::Post => item.post.as_mut(),
                    HttpMethod::Delete => item.delete.as_mut(),
                    HttpMethod::Patch => item.patch.as_mut(),
                    _ => None,
                };
                let Some(operation) = operation else {
                    continue;
                };
                operation.security.get_or_insert_with(|| {
                    vec![SecurityRequirement::new("token", Vec::<String>::new())]
                });
                let responses = &mut operation.responses.responses;
                responses.entry("400".into()).or_insert_with(|| {
                    error("a bad request: the message names what was wrong (an unknown query parameter, a bad value)").into()
                });
                responses.entry("401".into()).or_insert_with(|| {
                    error("no token, a wrong one, or a session that ended").into()
                });
                if method != HttpMethod::Get {
                    responses
                        .entry("403".into())
                        .or_insert_with(|| error("the signed-in user's role is too low").into());
                }
            }
        }
        if let Some(components) = openapi.components.as_mut() {
            for name in ["AppliedPipelines", "AppliedRules"] {
                if let Some(utoipa::openapi::RefOr::T(schema)) = components.schemas.get_mut(name)
                    && let utoipa::openapi::schema::Schema::OneOf(one_of) = schema
                {
                    let mut any_of = utoipa::openapi::schema::AnyOf::new();
                    any_of.items = std::mem::take(&mut one_of.items);
                    any_of.description = one_of.description.take();
                    *schema = utoipa::openapi::schema::Schema::AnyOf(any_of);
                }
            }
        }
    }
}

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // A device on the routes it calls itself: its id and token (its MQTT credentials).
        components.add_security_scheme(
            "device",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Fabrik API", description = "Ingest, query and operate Fabrik.", version = "1"),
    paths(
        crate::routes::ready,
        crate::routes::metrics,
        crate::routes::services,
        crate::routes::write_v1,
        crate::routes::write_influx_v1,
        crate::routes::write_influx_v2,
        crate::routes::write_samples,
        crate::routes::query,
        crate::blobs::put_blob,
        crate::blobs::get_blob,
        crate::routes::tables,
        crate::routes::store_status,
        crate::routes::persist,
        crate::routes::compact,
        crate::routes::openapi,
        crate::routes::asyncapi,
        crate::devices::create,
        crate::devices::list,
        crate::devices::show,
        crate::devices::update,
        crate::devices::remove,
        crate::devices::rotate_token,
        crate::devices::events,
        crate::setpoints::list,
        crate::setpoints::set,
        crate::attestation::challenge,
        crate::attestation::evidence,
        crate::attestation::begin_activation,
        crate::attestation::finish_activation,
        crate::attestation::status,
        crate::attestation::event_log,
        crate::attestation::ima_log,
        crate::attestation::enrol_key,
        crate::attestation::remove_key,
        crate::attestation::policies,
        crate::attestation::policy,
        crate::attestation::set_policy,
        crate::attestation::remove_policy,
        crate::attestation::runtime_policy,
        crate::attestation::set_runtime_policy,
        crate::attestation::merge_runtime_policy,
        crate::attestation::remove_runtime_policy,
        crate::alerts::list,
        crate::alerts::show,
        crate::alerts::ack,
        crate::alerts::apply,
        crate::alerts::silences,
        crate::alerts::create_silence,
        crate::alerts::remove_silence,
        crate::alerts::notifiers,
        crate::alert_rules::list,
        crate::alert_rules::show,
        crate::alert_rules::apply,
        crate::alert_rules::apply_all,
        crate::alert_rules::remove,
        crate::session::sign_in,
        crate::session::sign_out,
        crate::session::whoami,
        crate::users::list,
        crate::users::create,
        crate::users::remove,
        crate::users::set_password,
        crate::audit::list,
        crate::audit::verify,
        crate::compliance::report,
        crate::links::status,
        crate::links::start_backfill,
        crate::links::cancel_backfill,
        crate::updates::status,
        crate::updates::fleet,
        crate::fleet::devices,
        crate::fleet_keys::recipients,
        crate::privacy::export,
        crate::erasure::erase,
        crate::stream::device_stream,
        crate::latest::latest,
        crate::pipelines::list,
        crate::pipelines::show,
        crate::pipelines::apply,
        crate::pipelines::apply_all,
        crate::pipelines::remove,
        crate::pipelines::retrain,
        crate::pipelines::drift,
        crate::pipelines::shadow,
        crate::pipelines::performance,
        crate::pipelines::new_performance_reference,
        crate::pipelines::models,
        crate::pipelines::model_file,
        crate::pipelines::put_model,
        crate::pipelines::remove_model,
        crate::lineage::show,
        crate::usecases::list,
        crate::usecases::show,
        crate::usecases::put,
        crate::usecases::remove,
        crate::usecases::kpis,
        crate::usecases::history,
        crate::usecases::gate,
        crate::usecases::change_stage,
        crate::usecases::decisions,
    ),
    modifiers(&TokenAuth, &CommonAnswers)
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
