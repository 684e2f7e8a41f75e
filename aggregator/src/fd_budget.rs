//! The process's file-descriptor budget.
//!
//! Every MQTT client costs three descriptors (its socket at the gateway, the
//! gateway's loopback connection to rumqttd, rumqttd's end of it), every
//! HTTP connection one, the database pool one per connection. Running out is
//! worse than a refused client: rumqttd's accept loop on loopback retries an
//! `EMFILE` at once, spinning and logging millions of lines a minute, and
//! every listener stops answering. So at start-up the soft limit is raised
//! to the hard one (many systems start services at a soft 1024), and the
//! connection caps are checked against it: the caps then keep the process
//! inside its budget whatever clients do.

/// Descriptors for everything that is not a connection: database files and
/// their WAL, the log, the model, listeners, the runtime's own.
const RESERVE: u64 = 256;

/// What the configured caps need at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub mqtt_connections: usize,
    pub http_connections: usize,
    pub database_connections: usize,
}

impl Demand {
    pub fn descriptors(&self) -> u64 {
        3 * self.mqtt_connections as u64
            + self.http_connections as u64
            + self.database_connections as u64
            + RESERVE
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit
/// now in force (`None`: unlimited or unknown).
pub fn raise_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the descriptor limit");
                return limit.maximum;
            }
            Err(e) => {
                tracing::warn!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the descriptor limit");
            }
        }
    }
    limit.current
}

/// Whether `demand` fits in `limit`; the problem, said so that an operator
/// knows what to change, when it does not.
pub fn check(demand: &Demand, limit: Option<u64>) -> Result<(), String> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let needed = demand.descriptors();
    if needed <= limit {
        return Ok(());
    }
    Err(format!(
        "the connection caps need up to {needed} file descriptors (3 × mqtt.max_connections = {}, \
         http.max_connections = {}, database.max_connections = {}, {RESERVE} for the rest) but the \
         process may open {limit}: raise the limit (systemd: LimitNOFILE=, shell: ulimit -n) or \
         lower the caps, or the process runs out of descriptors under load",
        3 * demand.mqtt_connections,
        demand.http_connections,
        demand.database_connections
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_are_checked_against_the_limit() {
        let demand = Demand {
            mqtt_connections: 10_000,
            http_connections: 512,
            database_connections: 8,
        };
        assert_eq!(demand.descriptors(), 30_000 + 512 + 8 + RESERVE);
        assert!(check(&demand, Some(65_536)).is_ok());
        assert!(check(&demand, None).is_ok());
        let why = check(&demand, Some(1024)).expect_err("does not fit");
        assert!(
            why.contains("3 × mqtt.max_connections = 30000") && why.contains("LimitNOFILE"),
            "{why}"
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, Resource};
        let now = raise_limit();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(now, limit.current);
    }
}
