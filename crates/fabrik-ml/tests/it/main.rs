//! Integration tests: one binary so the crate is linked once. They need only the fixtures in
//! `tests/fixtures/` (see its README), never `/work/shared`.

mod cbpe_nannyml;
mod drift_evidently;
mod drift_nannyml;
mod drift_river;
mod hst_river;
mod nab_scorer;
mod rart_reference;
mod sequential_tests;
mod skab_protocol;
mod support;
