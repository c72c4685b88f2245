//! Fabrik's runtime: configuration (file + environment, strict, every error at once), the
//! service manager that starts modules in dependency order and stops them in reverse, shutdown
//! signals, and telemetry (Prometheus metrics).
//!
//! It knows nothing about what the modules do; the `fabrik` binary wires them.

pub mod config;
pub mod error;
pub mod modbus;
pub mod opcua;
pub mod services;
pub mod shutdown;
pub mod sparkplug;
pub mod telemetry;
pub mod units;

pub use config::{Config, FileIndices, Settings};
pub use error::RuntimeError;
pub use services::{ServiceHandle, ServiceManager, ServiceState, ServiceStatus, Services};
