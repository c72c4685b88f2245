//! The service manager: starts modules in dependency order (each one ready before the next
//! starts), stops them in reverse order within a deadline, and turns one service's failure
//! into an orderly stop of the whole process. [`Services`] is the shared view behind
//! `/ready` and `/services`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot_free::RwLock;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::RuntimeError;

/// Re-exported so the lock type is an implementation detail.
mod parking_lot_free {
    pub(crate) type RwLock<T> = std::sync::RwLock<T>;
}

/// The lifecycle of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "error")]
pub enum ServiceState {
    /// Not started yet.
    New,
    /// Starting.
    Starting,
    /// Running and ready.
    Running,
    /// Asked to stop.
    Stopping,
    /// Stopped cleanly.
    Terminated,
    /// Failed, with its error.
    Failed(String),
}

/// One service's name and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// The module name.
    pub name: &'static str,
    /// Its state.
    #[serde(flatten)]
    pub state: ServiceState,
}

/// The shared, read-mostly view of every service's state.
#[derive(Debug, Clone, Default)]
pub struct Services {
    inner: Arc<RwLock<Vec<ServiceStatus>>>,
}

impl Services {
    /// All services, in start order.
    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        self.inner.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// True when every service is running.
    pub fn ready(&self) -> bool {
        let all = self.snapshot();
        !all.is_empty() && all.iter().all(|s| s.state == ServiceState::Running)
    }

    fn set(&self, name: &'static str, state: ServiceState) {
        if let Ok(mut all) = self.inner.write() {
            match all.iter_mut().find(|s| s.name == name) {
                Some(s) => s.state = state,
                None => all.push(ServiceStatus { name, state }),
            }
        }
    }
}

/// A started service: its stop token and its task. The task returns when the token is
/// cancelled (after finishing in-flight work) or when the service fails.
pub struct ServiceHandle {
    /// Cancelled to ask the service to stop.
    pub stop: CancellationToken,
    /// The service's task.
    pub task: JoinHandle<Result<(), String>>,
}

struct Started {
    name: &'static str,
    stop: CancellationToken,
    done: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

/// Starts services in order and stops them in reverse.
pub struct ServiceManager {
    services: Services,
    started: Vec<Started>,
    exited_tx: mpsc::Sender<&'static str>,
    exited_rx: mpsc::Receiver<&'static str>,
}

/// Why [`ServiceManager::run`] returned.
#[derive(Debug)]
pub enum StopReason {
    /// The shutdown signal fired.
    Signal,
    /// A service exited on its own (an error, or an unexpected clean exit).
    ServiceExited(&'static str),
}

impl ServiceManager {
    /// A manager that will start `names` in this order; they are listed as `new` until then.
    pub fn new(names: &[&'static str]) -> Self {
        let services = Services::default();
        for name in names {
            services.set(name, ServiceState::New);
        }
        let (exited_tx, exited_rx) = mpsc::channel(names.len().max(1));
        Self {
            services,
            started: Vec::new(),
            exited_tx,
            exited_rx,
        }
    }

    /// The shared view for `/ready` and `/services`.
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    /// Starts one service; returns once it is ready. On error the service is marked failed and
    /// the caller should [`ServiceManager::stop_all`].
    pub async fn start<F, Fut>(&mut self, name: &'static str, start: F) -> Result<(), RuntimeError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ServiceHandle, String>>,
    {
        self.services.set(name, ServiceState::Starting);
        let handle = match start().await {
            Ok(h) => h,
            Err(message) => {
                self.services
                    .set(name, ServiceState::Failed(message.clone()));
                return Err(RuntimeError::ServiceFailed {
                    service: name,
                    message,
                });
            }
        };
        let (done_tx, done_rx) = tokio::sync::watch::channel(None);
        let exited = self.exited_tx.clone();
        let services = self.services.clone();
        let task = handle.task;
        // The watcher only waits on the service's own task, which the service's stop token
        // ends, so it needs no token of its own.
        tokio::spawn(async move {
            let result = match task.await {
                Ok(r) => r,
                Err(join) => Err(format!("task panicked or was aborted: {join}")),
            };
            match &result {
                Ok(()) => services.set(name, ServiceState::Terminated),
                Err(e) => services.set(name, ServiceState::Failed(e.clone())),
            }
            let _ = done_tx.send(Some(result));
            let _ = exited.send(name).await;
        });
        self.services.set(name, ServiceState::Running);
        self.started.push(Started {
            name,
            stop: handle.stop,
            done: done_rx,
        });
        tracing::info!(service = name, "Service started.");
        Ok(())
    }

    /// Waits for `shutdown` or for any service to exit, whichever comes first.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> StopReason {
        tokio::select! {
            () = shutdown => StopReason::Signal,
            Some(name) = self.exited_rx.recv() => StopReason::ServiceExited(name),
        }
    }

    /// Stops every started service in reverse start order, each within what is left of
    /// `deadline`. Returns the first failure, if any service failed.
    pub async fn stop_all(&mut self, deadline: Duration) -> Result<(), RuntimeError> {
        let until = tokio::time::Instant::now() + deadline;
        let mut first_failure = None;
        while let Some(mut service) = self.started.pop() {
            if service.done.borrow().is_none() {
                self.services.set(service.name, ServiceState::Stopping);
            }
            service.stop.cancel();
            let waited =
                tokio::time::timeout_at(until, service.done.wait_for(Option::is_some)).await;
            let outcome = match waited {
                Ok(Ok(result)) => result.clone(),
                Ok(Err(_)) => Some(Err("service watcher vanished".to_owned())),
                Err(_) => Some(Err(format!("did not stop within {deadline:?}"))),
            };
            if let Some(Err(message)) = outcome {
                tracing::error!(service = service.name, error = %message, "Service failed.");
                self.services
                    .set(service.name, ServiceState::Failed(message.clone()));
                first_failure.get_or_insert(RuntimeError::ServiceFailed {
                    service: service.name,
                    message,
                });
            } else {
                tracing::info!(service = service.name, "Service stopped.");
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn service(
        log: Arc<Mutex<Vec<String>>>,
        name: &'static str,
        fail_after: Option<Duration>,
    ) -> ServiceHandle {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Some(after) = fail_after {
                tokio::time::sleep(after).await;
                return Err(format!("{name} broke"));
            }
            token.cancelled().await;
            log.lock().expect("lock").push(format!("stop {name}"));
            Ok(())
        });
        ServiceHandle { stop, task }
    }

    #[tokio::test]
    async fn starts_in_order_and_stops_in_reverse() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut manager = ServiceManager::new(&["store", "api"]);
        let services = manager.services();
        assert!(!services.ready());
        for name in ["store", "api"] {
            let log = log.clone();
            manager
                .start(name, || async move { Ok(service(log, name, None)) })
                .await
                .expect("start");
        }
        assert!(services.ready());
        let reason = manager.run(async {}).await;
        assert!(matches!(reason, StopReason::Signal));
        manager
            .stop_all(Duration::from_secs(1))
            .await
            .expect("clean stop");
        assert_eq!(*log.lock().expect("lock"), vec!["stop api", "stop store"]);
        assert!(
            services
                .snapshot()
                .iter()
                .all(|s| s.state == ServiceState::Terminated)
        );
    }

    #[tokio::test]
    async fn one_failure_stops_everything_and_is_reported() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut manager = ServiceManager::new(&["store", "api"]);
        let l = log.clone();
        manager
            .start("store", || async move { Ok(service(l, "store", None)) })
            .await
            .expect("store");
        let l = log.clone();
        manager
            .start("api", || async move {
                Ok(service(l, "api", Some(Duration::from_millis(10))))
            })
            .await
            .expect("api");
        let reason = manager.run(std::future::pending()).await;
        assert!(matches!(reason, StopReason::ServiceExited("api")));
        let err = manager
            .stop_all(Duration::from_secs(1))
            .await
            .expect_err("api failed");
        assert!(err.to_string().contains("api broke"), "{err}");
        assert_eq!(*log.lock().expect("lock"), vec!["stop store"]);
    }

    #[tokio::test]
    async fn a_failed_start_is_reported() {
        let mut manager = ServiceManager::new(&["store"]);
        let err = manager
            .start("store", || async {
                Err::<ServiceHandle, _>("disk on fire".to_owned())
            })
            .await
            .expect_err("start fails");
        assert!(err.to_string().contains("disk on fire"));
        assert!(matches!(
            manager.services().snapshot()[0].state,
            ServiceState::Failed(_)
        ));
    }
}
