//! systemd integration (`Type=notify`): readiness, watchdog, stopping.
//!
//! Every call is a no-op when the agent does not run under systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs anywhere.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The outbox is open and the pipelines run.
pub fn ready() {
    notify(NotifyState::Ready);
}

pub fn stopping() {
    notify(NotifyState::Stopping);
}

pub fn watchdog_ping() {
    notify(NotifyState::Watchdog);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, if set.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec) / 2)
    } else {
        None
    }
}
