//! fabrik-connect's tests against real peers and independent vectors: the Modbus poller against
//! pymodbus servers, the OPC UA client against asyncua servers, and Sparkplug B against payloads encoded by Google's protobuf runtime.
//! One binary, so the crate links once.

// A panic is the failure report here, helpers included (clippy.toml covers only test fns).
#![allow(clippy::unwrap_used)]

mod modbus;
mod opcua;
mod opcua_peer;
mod ports;
mod sparkplug;
