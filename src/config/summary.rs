//! The human summary `check` prints: what the gateway would run with, secrets left out.

use std::fmt::Write;
use std::time::Duration;

use super::{BudgetPeriod, Client, Config};

/// A duration the way an operator writes it (`"90d"`, `"60s"`, `"500ms"`), not humantime's
/// calendar split (`90d` would print as `2months 29days 2h 52m 48s`).
fn d(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() == 0 {
        if secs > 0 && secs % 86_400 == 0 {
            return format!("{}d", secs / 86_400);
        }
        for (unit, size) in [("h", 3_600), ("m", 60)] {
            if secs >= 2 * size && secs % size == 0 {
                return format!("{}{unit}", secs / size);
            }
        }
        return format!("{secs}s");
    }
    if duration.subsec_nanos() % 1_000_000 == 0 {
        return format!("{}ms", duration.as_millis());
    }
    humantime::format_duration(duration).to_string()
}

/// Said by `check` and logged as a warning by `serve` when the admin listener is reachable
/// from other hosts and needs no token.
pub const ADMIN_OPEN: &str = "no token, and not on loopback: /metrics and /usage are open to \
                              anyone who can reach it; set admin.token_env";

impl Config {
    /// Whether the admin listener is reachable from other hosts without a token.
    pub fn admin_is_open(&self) -> bool {
        self.admin.token.is_none() && !self.admin.listen.ip().is_loopback()
    }

    /// A multi-line summary of listeners, upstream, limits, ledger and clients. Never contains
    /// a secret: the upstream key and admin token appear only as where they come from / whether
    /// they are set.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        let s = &self.server;
        writeln!(out, "config file:      {}", self.source.display())?;
        match &s.tls {
            Some(tls) => writeln!(
                out,
                "client listener:  {} (TLS, cert {}, key {}), public URL {}",
                s.listen,
                tls.cert.display(),
                tls.key.display(),
                s.public_url.as_deref().unwrap_or("its own address")
            )?,
            None => writeln!(
                out,
                "client listener:  {} (plain HTTP, no TLS), public URL {}",
                s.listen,
                s.public_url.as_deref().unwrap_or("its own address")
            )?,
        }
        writeln!(
            out,
            "                  max body {} bytes, request timeout {}, {} concurrent requests, shutdown grace {}",
            s.max_body_bytes,
            d(s.request_timeout),
            s.max_concurrent_requests,
            d(s.shutdown_grace)
        )?;
        writeln!(
            out,
            "                  {} connections at most, header read / idle timeout {}, send timeout {}",
            s.max_connections,
            d(s.header_read_timeout),
            d(s.send_timeout)
        )?;
        writeln!(
            out,
            "admin listener:   {} ({})",
            self.admin.listen,
            if self.admin.token.is_some() {
                "bearer token required for /metrics and /usage"
            } else if self.admin_is_open() {
                ADMIN_OPEN
            } else {
                "no token"
            }
        )?;
        let u = &self.upstream;
        write!(
            out,
            "upstream:         {}, key from {}, connect timeout {}, timeout {}",
            u.base_url.to_string().trim_end_matches('/'),
            u.api_key_source,
            d(u.connect_timeout),
            d(u.timeout)
        )?;
        if !u.extra_roots.is_empty() {
            write!(out, ", {} extra CA root(s)", u.extra_roots.len())?;
        }
        writeln!(out)?;
        let r = &self.rate_limit;
        writeln!(
            out,
            "rate limit:       {}/min x headroom {} = {}/min until the upstream reports its limit, max wait {}",
            r.requests_per_minute,
            r.headroom,
            (f64::from(r.requests_per_minute.get()) * r.headroom).floor(),
            d(r.max_wait)
        )?;
        writeln!(
            out,
            "ledger:           {}, retention {}",
            self.ledger.path.display(),
            d(self.ledger.retention)
        )?;
        writeln!(
            out,
            "credits:          warn when the balance falls below {}",
            self.credits.low_balance_warning
        )?;
        if let Some(sb) = &self.sandbox {
            writeln!(
                out,
                "sandbox:          in-process stand-in upstream on {}{}",
                sb.listen,
                if sb.demo_client_key.is_some() {
                    " (demo client key set)"
                } else {
                    ""
                }
            )?;
        }
        let clients = &self.clients.clients;
        writeln!(out, "clients:          {}", clients.len())?;
        for c in clients {
            write_client(out, c)?;
        }
        Ok(())
    }
}

fn write_client(out: &mut String, c: &Client) -> std::fmt::Result {
    write!(out, "  {}", c.id)?;
    if c.disabled {
        write!(out, " [DISABLED]")?;
    }
    write!(out, ": ")?;
    match c.requests_per_minute {
        Some(n) => write!(out, "{n}/min")?,
        None => write!(out, "no own rate limit")?,
    }
    let period = match c.budget_period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    };
    match c.credit_budget {
        Some(b) => write!(out, ", budget {b} credits/{period}")?,
        None => write!(out, ", no credit budget")?,
    }
    match &c.allow {
        None => write!(out, ", allow all of /api/")?,
        Some(patterns) => {
            write!(out, ", allow ")?;
            for (i, p) in patterns.iter().enumerate() {
                write!(out, "{}\"{p}\"", if i == 0 { "" } else { ", " })?;
            }
        }
    }
    match &c.accounts {
        None => write!(out, ", every account")?,
        Some(accounts) => write!(out, ", accounts {}", accounts.join(", "))?,
    }
    let n = c.key_hashes.len();
    writeln!(out, ", {n} key hash{}", if n == 1 { "" } else { "es" })
}

#[cfg(test)]
mod tests {
    use super::d;
    use std::time::Duration;

    #[test]
    fn durations_print_as_an_operator_writes_them() {
        let cases = [
            (Duration::from_secs(90 * 86_400), "90d"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(7_200), "2h"),
            (Duration::from_secs(3_600), "60m"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(30), "30s"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_millis(500), "500ms"),
        ];
        for (duration, text) in cases {
            assert_eq!(d(duration), text);
        }
    }
}
