//! The OpenAPI document, generated from the handlers' annotations. It is committed as
//! `docs/api/openapi.json`; a test fails when that file is stale (regenerate with
//! `fabrik openapi > docs/api/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
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
        crate::routes::tables,
        crate::routes::persist,
        crate::routes::compact,
        crate::routes::openapi,
        crate::devices::create,
        crate::devices::list,
        crate::devices::show,
        crate::devices::update,
        crate::devices::remove,
        crate::devices::rotate_token,
        crate::devices::events,
        crate::alerts::list,
        crate::alerts::show,
        crate::alerts::ack,
        crate::alerts::silences,
        crate::alerts::create_silence,
        crate::alerts::remove_silence,
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
        crate::stream::device_stream,
        crate::pipelines::list,
        crate::pipelines::show,
        crate::pipelines::apply,
        crate::pipelines::apply_all,
        crate::pipelines::remove,
        crate::pipelines::retrain,
        crate::pipelines::models,
        crate::pipelines::put_model,
        crate::pipelines::remove_model,
    ),
    modifiers(&TokenAuth)
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
