//! The runtime: one task per server, so a slow or dead server never delays another. Each task
//! owns one `async-opcua` client and session, drives the session event loop itself, creates
//! one subscription with the configured monitored items, and sends one [`Reading`] per data
//! change into the bounded channel.
//!
//! Reconnect, two layers:
//! - While a session exists, `async-opcua` reconnects by itself (retry limit infinite, backoff
//!   from `reconnect_min` doubling to `reconnect_max`): it reactivates the old session or
//!   creates a new one, then transfers the subscription or, when the server lost it (a
//!   restarted server), recreates it with the same monitored items and client handles. After
//!   each reconnect this task checks that a subscription exists and recreates it itself if the
//!   library could not, and triggers a publish (async-opcua 0.19 otherwise never publishes
//!   again after a reconnect). The integration tests kill and restart the server to prove it.
//! - Before a session exists (server down at start, GetEndpoints failing, no matching
//!   endpoint) the task retries with its own capped exponential backoff.
//!
//! On every (re)connect the task also reads what the writable items' nodes declare (their
//! `EURange` and unit, decision 0094), so the list of setpoints shows it before a first write.
//!
//! Every outage (connect failure or lost connection) sends one Bad reading per item with the
//! reason, once, so consumers know the values are stale; a refused monitored item (unknown
//! node id, …) sends one Bad reading naming the node.
//!
//! Backpressure: the library calls the data-change callback synchronously inside the event
//! loop; the callback only appends to a per-task buffer, and the task hands the buffer on to
//! the channel as the channel has room, polling the event loop all the while: the session's
//! keep-alives and publish requests, and the writes queued on it (decision 0090), go out on
//! time however slow the store is. A full channel leaves readings in the buffer, which past a
//! hard cap drops its oldest and counts them (logged).
//!
//! Shutdown: every task watches the caller's [`CancellationToken`], closes its session (bounded
//! wait) and ends; so does a task whose readings receiver is gone.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use opcua::client::{
    DataChangeCallback, Session, SessionConnectMode, SessionPollResult, SubscriptionActivity,
};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, QualifiedName, ReadValueId,
    StatusCode, TimestampsToReturn,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::config::OpcUaConfig;
use super::convert::{self, now_ns};
use super::declared::{Declared, LookupFailed, NODES_PER_REQUEST, disjoint, read_declared};
use super::plan::{ItemPlan, ServerPlan, plan};
use super::session::{ConnectSettings, build_client, open_session, sync_trust_dir};
use super::write::{OpcUaWriter, ServerLink};
use super::{OpcUaError, Quality, Reading};

/// Most readings held between the callback and the channel before dropping (one publish
/// response holds at most [`MAX_NOTIFICATIONS_PER_PUBLISH`]).
const BUFFER_CAP: usize = 10_000;
/// Requested cap of notifications per publish response.
const MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 1_000;
/// Requested keep-alive count of the subscription (publishing intervals without data).
const KEEP_ALIVE_COUNT: u32 = 10;
/// Requested lifetime count (must be at least three keep-alive counts).
const LIFETIME_COUNT: u32 = 60;
/// How long closing the session may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running connector: one task per server, stopped by the shutdown token given to
/// [`OpcUaClient::start`].
#[derive(Debug)]
pub struct OpcUaClient {
    tracker: TaskTracker,
    writer: OpcUaWriter,
}

impl OpcUaClient {
    /// Validates `config` (every problem reported at once) and starts one task per server.
    /// Must be called inside a Tokio runtime.
    pub fn start(
        config: &OpcUaConfig,
        readings: mpsc::Sender<Reading>,
        shutdown: CancellationToken,
    ) -> Result<Self, OpcUaError> {
        Ok(Self::spawn(plan(config)?, readings, shutdown))
    }

    /// Starts one task per already validated server.
    pub fn spawn(
        servers: Vec<ServerPlan>,
        readings: mpsc::Sender<Reading>,
        shutdown: CancellationToken,
    ) -> Self {
        let tracker = TaskTracker::new();
        let (writer, links) = OpcUaWriter::new(&servers);
        for (server, link) in servers.into_iter().zip(links) {
            tracker.spawn(ServerTask::new(server, readings.clone(), link, shutdown.clone()).run());
        }
        tracker.close();
        Self { tracker, writer }
    }

    /// The handle that writes the servers' writable items.
    pub fn writer(&self) -> OpcUaWriter {
        self.writer.clone()
    }

    /// Waits until every server task has ended (after the shutdown token was cancelled, or
    /// once the readings receiver is dropped).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }
}

/// The task stops: shutdown was requested or the receiver is gone.
struct Stop;

/// Readings handed from the synchronous data-change callback to the task.
#[derive(Default)]
struct Buffer {
    queue: Mutex<VecDeque<Reading>>,
    dropped: AtomicU64,
    notify: Notify,
}

impl Buffer {
    fn push(&self, reading: Reading) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        if queue.len() >= BUFFER_CAP {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(reading);
        drop(queue);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Reading> {
        self.queue.lock().ok()?.pop_front()
    }

    /// Puts back a reading the channel had no room for, first in line again.
    fn unpop(&self, reading: Reading) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_front(reading);
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().map_or(true, |q| q.is_empty())
    }
}

/// Creates the subscription and its items; the per-item status codes, in item order.
type SubscribeFuture = Pin<Box<dyn Future<Output = Result<Vec<StatusCode>, String>> + Send>>;
/// Reads the writable nodes' declarations into the server's link.
type DescribeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

struct ServerTask {
    plan: Arc<ServerPlan>,
    settings: ConnectSettings,
    readings: mpsc::Sender<Reading>,
    shutdown: CancellationToken,
    buffer: Arc<Buffer>,
    /// The connected session, for writes; empty while disconnected.
    link: Arc<ServerLink>,
    /// Delay applied at the next failure before a session exists.
    backoff: Duration,
    /// Failures in a row (0 = healthy).
    failures: u32,
    /// Bad readings for the current outage were sent.
    outage_reported: bool,
    /// When the last outage began (for the recovery log line).
    outage_since: Option<Instant>,
    reported_dropped: u64,
}

impl ServerTask {
    fn new(
        plan: ServerPlan,
        readings: mpsc::Sender<Reading>,
        link: Arc<ServerLink>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            link,
            settings: ConnectSettings::from_plan(&plan),
            backoff: plan.reconnect_min,
            plan: Arc::new(plan),
            readings,
            shutdown,
            buffer: Arc::default(),
            failures: 0,
            outage_reported: false,
            outage_since: None,
            reported_dropped: 0,
        }
    }

    async fn run(mut self) {
        debug!(server = %self.plan.id, endpoint = %self.plan.endpoint, items = self.plan.items.len(), "OPC UA client started.");
        let _ = self.run_inner().await;
        debug!(server = %self.plan.id, "OPC UA client stopped.");
    }

    async fn run_inner(&mut self) -> Result<(), Stop> {
        let mut client = loop {
            let settings = self.settings.clone();
            let built = tokio::task::spawn_blocking(move || build_client(&settings)).await;
            match built {
                Ok(Ok(client)) => break client,
                Ok(Err(err)) => self.failed(&err.to_string()).await?,
                Err(join) => {
                    self.failed(&format!("client setup panicked: {join}"))
                        .await?
                }
            }
            self.wait_backoff().await?;
        };
        loop {
            let opened = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stop),
                opened = open_session(&mut client, &self.settings) => opened,
            };
            match opened {
                Ok((session, event_loop)) => {
                    self.drive(&session, event_loop.enter()).await?;
                }
                Err(err) => self.failed(&err.to_string()).await?,
            }
            self.wait_backoff().await?;
        }
    }

    /// Drives one session until its event loop ends (`Ok`, to start over) or the task stops
    /// (the session is then closed).
    async fn drive(
        &mut self,
        session: &Arc<Session>,
        stream: impl Stream<Item = Result<SessionPollResult, StatusCode>>,
    ) -> Result<(), Stop> {
        tokio::pin!(stream);
        let result = self.drive_loop(session, &mut stream).await;
        self.link.set_session(None);
        if result.is_err() {
            close(session, &mut stream).await;
        }
        result
    }

    async fn drive_loop<S: Stream<Item = Result<SessionPollResult, StatusCode>>>(
        &mut self,
        session: &Arc<Session>,
        stream: &mut Pin<&mut S>,
    ) -> Result<(), Stop> {
        let mut subscribe: Option<SubscribeFuture> = None;
        let mut describe: Option<DescribeFuture> = None;
        let mut subscribed = false;
        let mut retry_subscribe_at: Option<Instant> = None;
        // Publish watchdog: a healthy subscription answers at least every keep-alive count of
        // publishing intervals; three times that without any Publish response while connected
        // nudges the publish loop (the reconnect bug above, or any other stall).
        let stall_after =
            (self.plan.publishing_interval * KEEP_ALIVE_COUNT * 3).max(Duration::from_secs(3));
        let mut watchdog = tokio::time::interval(stall_after / 3);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_publish = Instant::now();
        let mut connected = false;
        loop {
            self.flush_ready()?;
            let buffer = Arc::clone(&self.buffer);
            let readings = self.readings.clone();
            let waiting = !buffer.is_empty();
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stop),
                // Room in the channel again: hand on what waits. Meanwhile the loop goes on
                // polling the session, so its keep-alives, and the writes queued on it
                // (decision 0090), go out on time rather than when the store catches up.
                permit = readings.reserve(), if waiting => match (permit, buffer.pop()) {
                    (Ok(permit), Some(reading)) => permit.send(reading),
                    (Ok(_), None) => {}
                    (Err(_), _) => return Err(self.receiver_gone()),
                },
                () = buffer.notify.notified() => {}
                _ = watchdog.tick() => {
                    if connected && subscribed && last_publish.elapsed() > stall_after {
                        warn!(server = %self.plan.id, silent_ms = millis(last_publish.elapsed()), "OPC UA subscription silent; triggering a publish.");
                        session.trigger_publish_now();
                        last_publish = Instant::now();
                    }
                }
                created = poll_opt(&mut subscribe) => {
                    subscribe = None;
                    match created {
                        Ok(results) => {
                            subscribed = true;
                            self.report_items(&results);
                        }
                        Err(reason) => {
                            let err = OpcUaError::Subscribe { server: Arc::clone(&self.plan.id), reason };
                            warn!(server = %self.plan.id, error = %err, "OPC UA subscription failed; retrying.");
                            retry_subscribe_at = Some(Instant::now() + self.plan.reconnect_min);
                        }
                    }
                }
                () = poll_opt(&mut describe) => describe = None,
                () = sleep_opt(retry_subscribe_at) => {
                    retry_subscribe_at = None;
                    if !subscribed && subscribe.is_none() {
                        subscribe = Some(self.subscribe_future(session));
                    }
                }
                event = stream.next() => match event {
                    None => {
                        debug!(server = %self.plan.id, "OPC UA session event loop closed.");
                        return Ok(());
                    }
                    Some(Err(status)) => {
                        let reason = format!("session gave up: {status}");
                        self.failed(&reason).await?;
                        return Ok(());
                    }
                    Some(Ok(SessionPollResult::Subscription(SubscriptionActivity::Publish))) => {
                        last_publish = Instant::now();
                    }
                    Some(Ok(SessionPollResult::Reconnected(mode))) => {
                        connected = true;
                        self.link.set_session(Some(Arc::clone(session)));
                        last_publish = Instant::now();
                        self.succeeded(&mode);
                        let exists = session
                            .subscription_state()
                            .lock()
                            .len() > 0;
                        if subscribed && !exists {
                            warn!(server = %self.plan.id, "OPC UA subscription was not restored by the session; recreating it.");
                            subscribed = false;
                        }
                        if !subscribed && subscribe.is_none() {
                            subscribe = Some(self.subscribe_future(session));
                        }
                        // A lookup still running from before the reconnect would fail: start over.
                        describe = self.describe_future(session);
                        // async-opcua 0.19 starts a fresh publish loop after every reconnect
                        // that waits for a trigger newer than the one fired while the
                        // subscription was transferred or recreated, so without this nudge no
                        // Publish request is ever sent again (found by the restart test).
                        session.trigger_publish_now();
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                        connected = false;
                        self.link.set_session(None);
                        let err = OpcUaError::ConnectionLost {
                            server: Arc::clone(&self.plan.id),
                            status: status.to_string(),
                        };
                        self.outage(&err.to_string()).await?;
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                        // Pick up certificates an operator added to trusted/ meanwhile.
                        if let Err(reason) = sync_trust_dir(&self.plan.pki_dir) {
                            debug!(server = %self.plan.id, error = %reason, "OPC UA trust list not refreshed.");
                        }
                        let err = OpcUaError::Connect {
                            server: Arc::clone(&self.plan.id),
                            endpoint: self.plan.endpoint.clone(),
                            reason: status.to_string(),
                        };
                        self.outage(&err.to_string()).await?;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    fn subscribe_future(&self, session: &Arc<Session>) -> SubscribeFuture {
        let session = Arc::clone(session);
        let plan = Arc::clone(&self.plan);
        let buffer = Arc::clone(&self.buffer);
        Box::pin(async move {
            let items = plan.items.clone();
            let callback = DataChangeCallback::new(move |value, item| {
                let index = usize::try_from(item.client_handle()).unwrap_or(0);
                let Some(plan) = index.checked_sub(1).and_then(|i| items.get(i)) else {
                    return;
                };
                buffer.push(convert::reading(
                    &plan.device,
                    &plan.signal,
                    &value,
                    now_ns(),
                ));
            });
            let id = session
                .create_subscription(
                    plan.publishing_interval,
                    LIFETIME_COUNT,
                    KEEP_ALIVE_COUNT,
                    MAX_NOTIFICATIONS_PER_PUBLISH,
                    0,
                    true,
                    callback,
                )
                .await
                .map_err(|e| e.to_string())?;
            let requests = plan.items.iter().enumerate().map(item_request).collect();
            match session
                .create_monitored_items(id, TimestampsToReturn::Both, requests)
                .await
            {
                Ok(results) => Ok(results.iter().map(|r| r.result.status_code).collect()),
                Err(e) => {
                    // Best effort: do not leave an empty subscription behind before retrying.
                    let _ = session.delete_subscription(id).await;
                    Err(format!("CreateMonitoredItems: {e}"))
                }
            }
        })
    }

    /// Reads what the writable items' nodes declare and keeps it in the link; `None` without
    /// writable items. A failed lookup is logged and leaves what was known for those nodes (a
    /// write looks again); the other chunks are kept.
    fn describe_future(&self, session: &Arc<Session>) -> Option<DescribeFuture> {
        let writable: Vec<ItemPlan> = self
            .plan
            .items
            .iter()
            .filter(|item| item.writable)
            .cloned()
            .collect();
        if writable.is_empty() {
            return None;
        }
        let session = Arc::clone(session);
        let link = Arc::clone(&self.link);
        let server = Arc::clone(&self.plan.id);
        let timeout = self.plan.request_timeout;
        Some(Box::pin(async move {
            for chunk in writable.chunks(NODES_PER_REQUEST) {
                let nodes: Vec<_> = chunk.iter().map(|item| item.node_id.clone()).collect();
                let answers = match read_declared(&session, &nodes, timeout).await {
                    Ok(answers) => answers,
                    Err(status) => {
                        warn!(server = %server, status = %convert::status_text(status), "OPC UA writable nodes' EURange not looked up; each write looks it up.");
                        continue;
                    }
                };
                let mut known = Vec::with_capacity(chunk.len());
                for (item, answer) in chunk.iter().zip(answers) {
                    let declared = match answer {
                        Ok(declared) => declared,
                        // Listed with its type and the reason; a write looks again and, still
                        // not knowing, refuses a number.
                        Err(LookupFailed { why, data_type }) => {
                            warn!(server = %server, node = %item.node_text, reason = %why, "OPC UA node's EURange not known; each write looks it up.");
                            known.push((
                                item.node_id.clone(),
                                Declared {
                                    data_type,
                                    eu_range: Some(Err(why)),
                                    unit: None,
                                },
                            ));
                            continue;
                        }
                    };
                    match (&declared.eu_range, item.range) {
                        (Some(Err(why)), _) => {
                            warn!(server = %server, node = %item.node_text, reason = %why, "OPC UA node's EURange is not usable; writes keep to the configured range, if any.");
                        }
                        (Some(Ok((low, high))), Some((min, max)))
                            if disjoint((min, max), (*low, *high)) =>
                        {
                            warn!(server = %server, node = %item.node_text, min, max, low, high, "The configured range of a writable OPC UA item lies outside its node's EURange: every write to it is refused.");
                        }
                        _ => {}
                    }
                    known.push((item.node_id.clone(), declared));
                }
                link.remember(known);
            }
        }))
    }

    /// Sends one Bad reading per item the server refused.
    fn report_items(&mut self, results: &[StatusCode]) {
        let plan = Arc::clone(&self.plan);
        let mut good = 0usize;
        for (item, &status) in plan.items.iter().zip(results) {
            if status.is_good() {
                good += 1;
                continue;
            }
            let err = OpcUaError::Item {
                server: Arc::clone(&plan.id),
                node_id: item.node_text.clone(),
                signal: Arc::clone(&item.signal),
                status: format!(
                    "{} ({})",
                    convert::status_text(status),
                    status.sub_code().description()
                ),
            };
            warn!(server = %plan.id, error = %err, "OPC UA monitored item refused.");
            self.buffer.push(bad_reading(item, err.to_string()));
        }
        info!(server = %plan.id, items = good, refused = results.len() - good, "OPC UA subscription created.");
    }

    /// Hands on what the channel has room for now, without waiting (the session loop must go
    /// on being polled); the rest waits in the buffer, which drops its oldest past its cap.
    fn flush_ready(&mut self) -> Result<(), Stop> {
        while let Some(reading) = self.buffer.pop() {
            match self.readings.try_send(reading) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(reading)) => {
                    self.buffer.unpop(reading);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.receiver_gone()),
            }
        }
        self.report_dropped();
        Ok(())
    }

    /// Empties the buffer into the channel, waiting for room: only while no session runs.
    async fn flush(&mut self) -> Result<(), Stop> {
        while let Some(reading) = self.buffer.pop() {
            self.send(reading).await?;
        }
        self.report_dropped();
        Ok(())
    }

    fn report_dropped(&mut self) {
        let dropped = self.buffer.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_dropped {
            warn!(server = %self.plan.id, dropped = dropped - self.reported_dropped, total = dropped, "OPC UA readings dropped: buffer full.");
            self.reported_dropped = dropped;
        }
    }

    fn succeeded(&mut self, mode: &SessionConnectMode) {
        let since = self.outage_since.take();
        if self.failures > 0 || since.is_some() {
            info!(
                server = %self.plan.id,
                failures = self.failures,
                outage_ms = since.map_or(0, |t| millis(t.elapsed())),
                mode = ?mode,
                "OPC UA server reconnected."
            );
        } else {
            info!(server = %self.plan.id, endpoint = %self.plan.endpoint, "OPC UA session opened.");
        }
        self.failures = 0;
        self.backoff = self.plan.reconnect_min;
        self.outage_reported = false;
    }

    /// A failure before or between sessions: log, report, grow the backoff.
    async fn failed(&mut self, reason: &str) -> Result<(), Stop> {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            warn!(server = %self.plan.id, error = %reason, retry_in_ms = millis(self.backoff), "OPC UA server unavailable; retrying with backoff.");
        } else {
            debug!(server = %self.plan.id, error = %reason, failures = self.failures, retry_in_ms = millis(self.backoff), "OPC UA server still unavailable.");
        }
        self.outage(reason).await
    }

    /// Reports one Bad reading per item, once per outage (through the buffer: an outage seen
    /// inside the session loop must not stop it; [`Self::wait_backoff`] empties it otherwise).
    async fn outage(&mut self, reason: &str) -> Result<(), Stop> {
        if self.outage_since.is_none() {
            self.outage_since = Some(Instant::now());
        }
        if self.outage_reported {
            debug!(server = %self.plan.id, error = %reason, "OPC UA still disconnected.");
            return Ok(());
        }
        warn!(server = %self.plan.id, error = %reason, "OPC UA connection down; items reported Bad.");
        self.outage_reported = true;
        let plan = Arc::clone(&self.plan);
        for item in &plan.items {
            self.buffer.push(bad_reading(item, reason.to_owned()));
        }
        Ok(())
    }

    async fn wait_backoff(&mut self) -> Result<(), Stop> {
        self.flush().await?;
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.plan.reconnect_max);
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Stop),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    async fn send(&mut self, reading: Reading) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Stop),
            sent = self.readings.send(reading) => sent.map_err(|_| self.receiver_gone()),
        }
    }

    fn receiver_gone(&self) -> Stop {
        debug!(server = %self.plan.id, "Readings receiver dropped; OPC UA client stops.");
        Stop
    }
}

/// Closes the session, polling the event loop so the CloseSession request can go out.
async fn close<S: Stream<Item = Result<SessionPollResult, StatusCode>>>(
    session: &Arc<Session>,
    stream: &mut Pin<&mut S>,
) {
    session.disable_reconnects();
    let closing = async {
        let disconnect = session.disconnect();
        tokio::pin!(disconnect);
        loop {
            tokio::select! {
                _ = &mut disconnect => break,
                event = stream.next() => if event.is_none() { break },
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

fn item_request((index, item): (usize, &ItemPlan)) -> MonitoredItemCreateRequest {
    let filter = match item.deadband {
        Some(deadband) => ExtensionObject::from_message(DataChangeFilter {
            trigger: DataChangeTrigger::StatusValue,
            deadband_type: DeadbandType::Absolute as u32,
            deadband_value: deadband,
        }),
        None => ExtensionObject::null(),
    };
    MonitoredItemCreateRequest {
        item_to_monitor: ReadValueId {
            node_id: item.node_id.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
            data_encoding: QualifiedName::null(),
        },
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: u32::try_from(index + 1).unwrap_or(u32::MAX),
            sampling_interval: item.sampling_interval_ms,
            filter,
            queue_size: item.queue_size,
            discard_oldest: true,
        },
    }
}

fn bad_reading(item: &ItemPlan, status: String) -> Reading {
    Reading {
        device_id: Arc::clone(&item.device),
        signal: Arc::clone(&item.signal),
        timestamp_ns: now_ns(),
        value: None,
        quality: Quality::Bad,
        status,
    }
}

async fn poll_opt<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
