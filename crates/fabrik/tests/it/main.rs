//! Fabrik's integration tests: one binary (links once), one module per area. Servers run on
//! 127.0.0.1 with ephemeral ports; data lives in temporary directories.

mod alerts;
mod api;
mod attestation;
mod audit;
mod bridge;
mod cli;
mod clips;
mod crash;
mod deploy;
mod devices;
mod drift;
mod https;
mod lineage;
mod modbus;
mod mqtt;
mod objects;
mod opcua;
mod openlineage;
mod paho;
mod pipelines;
mod postgres;
mod releases;
mod rollups;
mod shadow;
mod sparkplug;
mod sparkplug_bridge;
mod sparkplug_setpoints;
mod storage;
mod support;
mod traces;
mod uplink;
mod usecases;
mod users;
mod vulnscan;
