//! Integration tests: one binary so the crate is linked once. They need only the fixtures in
//! `tests/fixtures/` (see its README), never `/work/shared`.

mod edge_cases;
mod errors;
mod ops;
mod reference;
mod support;
