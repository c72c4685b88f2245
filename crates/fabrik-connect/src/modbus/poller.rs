//! The runtime: one task per device, so a slow or dead device never delays another. Each task
//! owns one TCP connection and one `tokio::time::Interval` per map, polls the map's requests in
//! order, decodes them and sends one [`Reading`] per point into the bounded channel.
//!
//! Schedule: intervals use [`MissedTickBehavior::Skip`], which keeps ticks on the grid set at
//! start (`start + k × period`): a poll that overran (a timeout) is followed by one immediate
//! catch-up tick and then the grid again, never a burst. `Delay` would instead shift the whole
//! schedule by every overrun, so timestamps of a device drift after each timeout.
//!
//! Failures: a timeout or transport error drops the connection (a late answer would desync
//! the transaction ids) and starts a reconnect backoff that doubles per failure up to
//! `reconnect_max`; every point polled meanwhile is sent Bad with the reason. A Modbus
//! exception keeps the connection: only the points of that request are Bad.
//!
//! Backpressure: a full readings channel makes the device task wait (nothing is dropped);
//! ticks missed while waiting are skipped, not queued. Shutdown: every task watches the
//! caller's [`CancellationToken`], also while connecting, reading or sending.
//!
//! Writes (decision 0090) go through the same task and connection, between two polls and
//! before the next: a device that allows one master connection sees one, and a write never
//! interleaves with a poll's requests.

use std::borrow::Cow;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_modbus::client::{Client, Context, Reader, tcp};
use tokio_modbus::{ExceptionCode, Request, Slave};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::config::{ModbusConfig, Table};
use super::plan::{DevicePlan, PlannedPoint, ReadRequest, WritablePoint, plan};
use super::write::{Encoded, ModbusWriter, WriteCommand, Written};
use super::{ModbusError, Quality, Reading, Value};

/// The running poller: one task per device, stopped by the shutdown token given to
/// [`ModbusPoller::start`].
#[derive(Debug)]
pub struct ModbusPoller {
    tracker: TaskTracker,
    writer: ModbusWriter,
}

impl ModbusPoller {
    /// Validates `config` (every problem reported at once) and starts one task per device.
    /// Must be called inside a Tokio runtime.
    pub fn start(
        config: &ModbusConfig,
        readings: mpsc::Sender<Reading>,
        shutdown: CancellationToken,
    ) -> Result<Self, ModbusError> {
        Ok(Self::spawn(plan(config)?, readings, shutdown))
    }

    /// Starts one task per already validated device.
    pub fn spawn(
        devices: Vec<DevicePlan>,
        readings: mpsc::Sender<Reading>,
        shutdown: CancellationToken,
    ) -> Self {
        let tracker = TaskTracker::new();
        let (writer, commands) = ModbusWriter::new(&devices);
        for (device, commands) in devices.into_iter().zip(commands) {
            let task = DeviceTask::new(device, readings.clone(), commands, shutdown.clone());
            tracker.spawn(task.run());
        }
        tracker.close();
        Self { tracker, writer }
    }

    /// The handle that sets the devices' writable points.
    pub fn writer(&self) -> ModbusWriter {
        self.writer.clone()
    }

    /// Waits until every device task has ended (after the shutdown token was cancelled, or
    /// once the readings receiver is dropped).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }
}

/// The task stops: shutdown was requested or the receiver is gone.
struct Stop;

/// The answer to one request.
enum Data {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

struct DeviceTask {
    plan: Arc<DevicePlan>,
    readings: mpsc::Sender<Reading>,
    commands: mpsc::Receiver<WriteCommand>,
    shutdown: CancellationToken,
    conn: Option<Context>,
    /// Delay applied at the next failure.
    backoff: Duration,
    /// No connect attempt before this.
    retry_at: Instant,
    /// Failures in a row (0 = healthy).
    failures: u32,
    last_error: String,
}

impl DeviceTask {
    fn new(
        plan: DevicePlan,
        readings: mpsc::Sender<Reading>,
        commands: mpsc::Receiver<WriteCommand>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            backoff: plan.reconnect_min,
            plan: Arc::new(plan),
            readings,
            commands,
            shutdown,
            conn: None,
            retry_at: Instant::now(),
            failures: 0,
            last_error: String::new(),
        }
    }

    async fn run(mut self) {
        let mut intervals: Vec<Interval> = self
            .plan
            .maps
            .iter()
            .map(|map| {
                let mut interval = tokio::time::interval(map.interval);
                interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
                interval
            })
            .collect();
        debug!(device = %self.plan.id, address = %self.plan.address, maps = intervals.len(), "Modbus poller started.");
        let mut first = 0;
        loop {
            // Writes first: an operator waits for them, a poll keeps its grid anyway.
            let index = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => {
                    if self.execute(command).await.is_err() {
                        break;
                    }
                    continue;
                }
                index = next_tick(&mut intervals, first) => index,
            };
            // Round robin among maps due at once, so a slow map cannot starve the others.
            first = (index + 1) % intervals.len();
            if self.poll_map(index).await.is_err() {
                break;
            }
        }
        self.conn = None;
        debug!(device = %self.plan.id, "Modbus poller stopped.");
    }

    async fn poll_map(&mut self, index: usize) -> Result<(), Stop> {
        let plan = Arc::clone(&self.plan);
        let timestamp_ns = now_ns();
        for request in &plan.maps[index].requests {
            let outcome = self.read(request).await?;
            for point in &request.points {
                let decoded = match &outcome {
                    Ok(data) => decode_point(data, point).map_err(|reason| {
                        format!("device `{}`: point `{}`: {reason}", plan.id, point.signal)
                    }),
                    Err(reason) => Err(reason.clone()),
                };
                let (value, quality, reason) = match decoded {
                    Ok(value) => (Some(value), Quality::Good, None),
                    Err(reason) => (None, Quality::Bad, Some(reason)),
                };
                self.send(Reading {
                    device_id: Arc::clone(&plan.id),
                    signal: Arc::clone(&point.signal),
                    timestamp_ns,
                    value,
                    quality,
                    reason,
                    unit: point.unit.clone(),
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Runs one request, connecting first if needed; the inner error is the Bad reason.
    async fn read(&mut self, request: &ReadRequest) -> Result<Result<Data, String>, Stop> {
        Ok(self
            .read_range(request.table, request.start, request.count, || {
                request.describe()
            })
            .await?
            .map_err(|e| e.to_string()))
    }

    /// Reads `count` items of `table` from `start` on the device's connection.
    async fn read_range(
        &mut self,
        table: Table,
        start: u16,
        count: u16,
        describe: impl Fn() -> String,
    ) -> Result<Result<Data, ModbusError>, Stop> {
        let mut ctx = match self.connection(false).await? {
            Ok(ctx) => ctx,
            Err(e) => return Ok(Err(e)),
        };
        let call = async {
            match table {
                Table::Holding => ctx
                    .read_holding_registers(start, count)
                    .await
                    .map(|r| r.map(Data::Registers)),
                Table::Input => ctx
                    .read_input_registers(start, count)
                    .await
                    .map(|r| r.map(Data::Registers)),
                Table::Coil => ctx
                    .read_coils(start, count)
                    .await
                    .map(|r| r.map(Data::Bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(Data::Bits)),
            }
        };
        let result = timed(&self.shutdown, self.plan.timeout, call).await?;
        Ok(self.settle(ctx, result, describe))
    }

    /// The open connection, or a new one. Between reconnect attempts a poll is answered
    /// "disconnected" at once; a write (`now`) tries to connect anyway: a person asked for it.
    async fn connection(&mut self, now: bool) -> Result<Result<Context, ModbusError>, Stop> {
        if let Some(ctx) = self.conn.take() {
            return Ok(Ok(ctx));
        }
        let at = Instant::now();
        if !now && at < self.retry_at {
            return Ok(Err(ModbusError::Disconnected {
                device: Arc::clone(&self.plan.id),
                retry_in_ms: millis(self.retry_at - at),
                last_error: self.last_error.clone(),
            }));
        }
        let connected = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Err(Stop),
            connected = connect(&self.plan) => connected,
        };
        Ok(match connected {
            Ok(ctx) => {
                info!(device = %self.plan.id, address = %self.plan.address, "Modbus device connected.");
                Ok(ctx)
            }
            Err(err) => {
                self.failed(&err.to_string());
                Err(err)
            }
        })
    }

    /// Keeps the connection unless the call failed on it, and names the failure.
    fn settle<T>(
        &mut self,
        ctx: Context,
        result: Result<tokio_modbus::Result<T>, Elapsed>,
        describe: impl Fn() -> String,
    ) -> Result<T, ModbusError> {
        let device = Arc::clone(&self.plan.id);
        match result {
            Ok(Ok(Ok(data))) => {
                self.conn = Some(ctx);
                self.succeeded();
                Ok(data)
            }
            Ok(Ok(Err(code))) => {
                // The device answered: the connection is fine, only this request failed.
                self.conn = Some(ctx);
                self.succeeded();
                let err = exception(device, describe(), code);
                debug!(error = %err, "Modbus exception.");
                Err(err)
            }
            Ok(Err(source)) => {
                let err = ModbusError::Transport {
                    device,
                    request: describe(),
                    source,
                };
                self.failed(&err.to_string());
                Err(err)
            }
            Err(_elapsed) => {
                let err = ModbusError::Timeout {
                    device,
                    request: describe(),
                    timeout_ms: millis(self.plan.timeout),
                };
                self.failed(&err.to_string());
                Err(err)
            }
        }
    }

    /// Carries out one write unless its caller gave up on it or its deadline passed while it
    /// waited, and answers it.
    async fn execute(&mut self, command: WriteCommand) -> Result<(), Stop> {
        if !command.claim() {
            debug!(device = %self.plan.id, signal = %command.point.signal, "Modbus write given up by its caller; not written.");
            return Ok(());
        }
        let WriteCommand {
            point,
            data,
            enqueued,
            deadline,
            reply,
            ..
        } = command;
        let now = Instant::now();
        let outcome = if now > deadline {
            Err(ModbusError::Expired {
                device: Arc::clone(&self.plan.id),
                waited_ms: millis(now - enqueued),
            })
        } else {
            match self.write_point(&point, &data).await {
                Ok(outcome) => outcome,
                Err(Stop) => {
                    // Stopped during the write request itself: whether it reached the device
                    // is unknown. Say so, rather than let the caller read a dropped answer as
                    // "nothing was written".
                    let _ = reply.send(Err(ModbusError::Interrupted(Arc::clone(&self.plan.id))));
                    return Err(Stop);
                }
            }
        };
        match &outcome {
            Ok(written) => {
                info!(device = %self.plan.id, signal = %point.signal, read_back = ?written.read_back, confirmed = written.confirmed, "Modbus point written.");
            }
            Err(e) => {
                warn!(device = %self.plan.id, signal = %point.signal, error = %e, "Modbus write failed.")
            }
        }
        // The caller waits for the answer to the end (the API runs it to completion).
        let _ = reply.send(outcome);
        Ok(())
    }

    /// Writes `data` to the point, then reads the point back. Once the device acknowledged
    /// the write, a read-back that fails is part of a written outcome, not an error: the value
    /// is on the device.
    async fn write_point(
        &mut self,
        point: &WritablePoint,
        data: &Encoded,
    ) -> Result<Result<Written, ModbusError>, Stop> {
        let (table, address, count) = (point.table, point.address, point.codec.len);
        let range = move || {
            format!(
                "{table} {address}..{}",
                u32::from(address) + u32::from(count)
            )
        };
        // A shutdown while connecting: nothing was sent. (The loop sees the shutdown next.)
        let mut ctx = match self.connection(true).await {
            Ok(Ok(ctx)) => ctx,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(Stop) => return Ok(Err(ModbusError::Stopped(Arc::clone(&self.plan.id)))),
        };
        // Through `call`, not `Writer`: tokio-modbus debug-asserts that a single write's echo
        // repeats the value, and a device that clamps echoes what it kept. The read-back
        // below is what tells whether the value was taken.
        let request = match data {
            Encoded::Bit(bit) => Request::WriteSingleCoil(address, *bit),
            Encoded::Registers(words) if words.len() == 1 => {
                Request::WriteSingleRegister(address, words[0])
            }
            Encoded::Registers(words) => {
                Request::WriteMultipleRegisters(address, Cow::Borrowed(words.as_slice()))
            }
        };
        let call = async { ctx.call(request).await.map(|answer| answer.map(|_| ())) };
        let result = timed(&self.shutdown, self.plan.timeout, call).await?;
        if let Err(e) = self.settle(ctx, result, || format!("write {}", range())) {
            return Ok(Err(e));
        }
        // From here the device has acknowledged the write: a shutdown only cuts the read-back.
        let read = match self
            .read_range(table, address, count, || format!("read back {}", range()))
            .await
        {
            Ok(read) => read,
            Err(Stop) => {
                return Ok(Ok(Written {
                    read_back: Err("the poller stopped before the read-back".to_owned()),
                    confirmed: false,
                }));
            }
        };
        let answer = match read {
            Ok(answer) => answer,
            Err(e) => {
                return Ok(Ok(Written {
                    read_back: Err(e.to_string()),
                    confirmed: false,
                }));
            }
        };
        let as_read = PlannedPoint {
            signal: Arc::clone(&point.signal),
            address,
            offset: 0,
            codec: point.codec.clone(),
            unit: point.unit.clone(),
        };
        let read_back = decode_point(&answer, &as_read).map_err(|reason| {
            format!(
                "device `{}`: point `{}`: what was read back does not decode: {reason}",
                self.plan.id, point.signal
            )
        });
        // Compared as registers, not values: a float that did not survive the device, or a
        // device that clamps, shows here even when the decoded values look alike.
        let confirmed = read_back.is_ok()
            && match (&answer, data) {
                (Data::Registers(read), Encoded::Registers(written)) => read == written,
                (Data::Bits(read), Encoded::Bit(written)) => read.first() == Some(written),
                _ => false,
            };
        Ok(Ok(Written {
            read_back,
            confirmed,
        }))
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            info!(device = %self.plan.id, failures = self.failures, "Modbus device recovered.");
        }
        self.failures = 0;
        self.backoff = self.plan.reconnect_min;
    }

    /// Schedules the next connect attempt after the current backoff, then doubles it (capped).
    fn failed(&mut self, reason: &str) {
        self.conn = None;
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Instant::now() + self.backoff;
        if self.failures == 1 {
            warn!(device = %self.plan.id, error = %reason, retry_in_ms = millis(self.backoff), "Modbus device failed; reconnecting with backoff.");
        } else {
            debug!(device = %self.plan.id, error = %reason, failures = self.failures, retry_in_ms = millis(self.backoff), "Modbus device still failing.");
        }
        self.backoff = (self.backoff * 2).min(self.plan.reconnect_max);
        // Kept without the `device `id`: ` prefix: it is quoted inside a message that has one.
        let prefix = format!("device `{}`: ", self.plan.id);
        self.last_error = reason.strip_prefix(&prefix).unwrap_or(reason).to_owned();
    }

    async fn send(&mut self, reading: Reading) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Stop),
            sent = self.readings.send(reading) => sent.map_err(|_| {
                debug!(device = %self.plan.id, "Readings receiver dropped; Modbus poller stops.");
                Stop
            }),
        }
    }
}

/// Runs one call within the device's timeout, or stops. (Not a method: the task's state,
/// which holds a connection that is not `Sync`, must not be borrowed across the await.)
async fn timed<T>(
    shutdown: &CancellationToken,
    timeout: Duration,
    call: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<Result<tokio_modbus::Result<T>, Elapsed>, Stop> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(Stop),
        result = tokio::time::timeout(timeout, call) => Ok(result),
    }
}

/// Opens the TCP connection within the device timeout (`host:port` may need DNS).
async fn connect(plan: &DevicePlan) -> Result<Context, ModbusError> {
    let attempt = async {
        let stream = TcpStream::connect(plan.address.as_str()).await?;
        // One small request per round trip: Nagle would only add latency.
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    };
    let reason = match tokio::time::timeout(plan.timeout, attempt).await {
        Ok(Ok(stream)) => return Ok(tcp::attach_slave(stream, Slave(plan.unit_id))),
        Ok(Err(err)) => err.to_string(),
        Err(_elapsed) => format!("no answer within {} ms", millis(plan.timeout)),
    };
    Err(ModbusError::Connect {
        device: Arc::clone(&plan.id),
        address: plan.address.clone(),
        reason,
    })
}

/// Resolves to the index of the first interval that ticks, scanning from `first`.
fn next_tick(intervals: &mut [Interval], first: usize) -> impl Future<Output = usize> + '_ {
    poll_fn(move |cx| {
        let n = intervals.len();
        for k in 0..n {
            let i = (first + k) % n;
            if intervals[i].poll_tick(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
}

fn decode_point(data: &Data, point: &PlannedPoint) -> Result<Value, String> {
    let start = usize::from(point.offset);
    match data {
        Data::Registers(regs) => {
            let end = start + usize::from(point.codec.len);
            let regs = regs
                .get(start..end)
                .ok_or_else(|| format!("short answer: {} registers", regs.len()))?;
            point.codec.decode_registers(regs)
        }
        Data::Bits(bits) => bits
            .get(start)
            .map(|&bit| point.codec.decode_bit(bit))
            .ok_or_else(|| format!("short answer: {} bits", bits.len())),
    }
}

fn exception(device: Arc<str>, request: String, code: ExceptionCode) -> ModbusError {
    let code = u8::from(code);
    let name = match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    };
    ModbusError::Exception {
        device,
        request,
        code,
        name,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock now in ns since the Unix epoch (0 before it, saturating far after it).
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
