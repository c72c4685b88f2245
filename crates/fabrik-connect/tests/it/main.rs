//! fabrik-connect's tests against real peers and independent vectors: the Modbus poller against
//! pymodbus servers, and Sparkplug B against payloads encoded by Google's protobuf runtime.
//! One binary, so the crate links once.

mod modbus;
mod sparkplug;
