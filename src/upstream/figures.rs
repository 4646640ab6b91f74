//! Which credit figures of an upstream answer are taken as real. The body's `_meta` scanner and
//! the `x-ofapi-*` header reader hand over what the answer says, as unsigned 64-bit numbers;
//! [`accept_credits`] is the one place where those figures become the facts that the log line,
//! the metrics, the ledger, the budgets and the balance watch are fed. A figure that cannot be
//! real is unknown there, like a figure the answer did not give: the ledger stores NULL, the
//! call counts in `ofapi_gateway_credits_unknown_total`, the budget is charged the reserved
//! amount. One absurd answer must not wrap a counter, poison a report or a budget.
//!
//! The rate-limit figures need no such gate: they are read as `u32` (a larger figure is already
//! unknown), and the limiter derives only bounded paces from them (`limiter::budget`).

/// The largest credit figure taken as real: 2^53. Past it an integer is no longer exact in an
/// IEEE double, which JSON readers, Prometheus samples and report totals use, and no team holds
/// nine quadrillion credits: such a figure is a broken answer.
pub const MAX_CREDIT_FIGURE: u64 = 1 << 53;

/// What an answer reports about credits, from one source (the body's `_meta` or the headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportedCredits {
    pub used: Option<u64>,
    pub balance: Option<u64>,
}

/// The credit facts of one answer, as taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptedCredits {
    /// `None`: unknown (not reported, or reported and not real).
    pub used: Option<u64>,
    pub balance: Option<u64>,
    /// What was reported and not taken, and why, for the access log line
    /// (`used 18446744073709551615 is above 2^53; taken as unknown`).
    pub implausible: Option<String>,
}

/// Why a reported figure was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implausible {
    /// Above [`MAX_CREDIT_FIGURE`].
    TooLarge,
    /// A charge above the balance the gateway last saw before the call: it cannot have been
    /// paid from that balance.
    AboveBalance { before: u64 },
}

/// `reported` as a credit figure (used or balance), or why it cannot be real.
pub fn credit_figure(reported: u64) -> Result<u64, Implausible> {
    if reported <= MAX_CREDIT_FIGURE {
        Ok(reported)
    } else {
        Err(Implausible::TooLarge)
    }
}

/// The credits of one answer: each figure from the body's `_meta`, else from the headers, and
/// only if [`credit_figure`] takes it (a rejected body figure falls back to the header's). A
/// charge above `balance_before` (the last balance the gateway saw, before this answer's) is
/// unknown as well.
///
/// A top-up between two answers can make a real charge look larger than the balance before it;
/// only a call that costs more than the whole balance last seen is affected, and it is then
/// recorded as unknown (charged the reserved amount), never as a figure that breaks a report.
pub fn accept_credits(
    meta: ReportedCredits,
    headers: ReportedCredits,
    balance_before: Option<u64>,
) -> AcceptedCredits {
    let mut implausible = None;
    let mut take = |name: &str, first: Option<u64>, second: Option<u64>| {
        let mut taken = None;
        for reported in [first, second].into_iter().flatten() {
            match credit_figure(reported) {
                Ok(figure) => {
                    taken = Some(figure);
                    break;
                }
                Err(why) => note(&mut implausible, name, reported, why),
            }
        }
        taken
    };
    let mut used = take("used", meta.used, headers.used);
    let balance = take("balance", meta.balance, headers.balance);
    if let (Some(charge), Some(before)) = (used, balance_before) {
        if charge > before {
            let why = Implausible::AboveBalance { before };
            note(&mut implausible, "used", charge, why);
            used = None;
        }
    }
    AcceptedCredits {
        used,
        balance,
        implausible: implausible.map(|text| text + "; taken as unknown"),
    }
}

/// Adds `name reported why` to the note of what was not taken.
fn note(implausible: &mut Option<String>, name: &str, reported: u64, why: Implausible) {
    let why = match why {
        Implausible::TooLarge => format!("{name} {reported} is above 2^53"),
        Implausible::AboveBalance { before } => {
            format!("{name} {reported} is above the balance before the call ({before})")
        }
    };
    match implausible {
        Some(text) => {
            text.push_str("; ");
            text.push_str(&why);
        }
        None => *implausible = Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(used: Option<u64>, balance: Option<u64>) -> ReportedCredits {
        ReportedCredits { used, balance }
    }

    #[test]
    fn figures_up_to_two_to_the_53_are_taken_and_larger_ones_are_not() {
        assert_eq!(credit_figure(0), Ok(0));
        assert_eq!(credit_figure(1 << 53), Ok(1 << 53));
        assert_eq!(credit_figure((1 << 53) + 1), Err(Implausible::TooLarge));
        assert_eq!(credit_figure(u64::MAX), Err(Implausible::TooLarge));
    }

    #[test]
    fn an_absurd_charge_or_balance_is_unknown_and_said_why() {
        let taken = accept_credits(
            reported(Some(u64::MAX), Some(u64::MAX)),
            ReportedCredits::default(),
            Some(1_000),
        );
        assert_eq!((taken.used, taken.balance), (None, None));
        assert_eq!(
            taken.implausible.as_deref(),
            Some(
                "used 18446744073709551615 is above 2^53; balance 18446744073709551615 is above \
                 2^53; taken as unknown"
            )
        );
    }

    #[test]
    fn a_charge_above_the_balance_before_the_call_is_unknown() {
        let taken = accept_credits(
            reported(Some(1_001), Some(5)),
            reported(None, None),
            Some(1_000),
        );
        assert_eq!((taken.used, taken.balance), (None, Some(5)));
        assert_eq!(
            taken.implausible.as_deref(),
            Some("used 1001 is above the balance before the call (1000); taken as unknown")
        );
        // The whole balance may be spent; with no balance seen yet only the size is checked.
        let all = accept_credits(
            reported(Some(1_000), Some(0)),
            reported(None, None),
            Some(1_000),
        );
        assert_eq!((all.used, all.implausible), (Some(1_000), None));
        let first = accept_credits(reported(Some(1 << 40), None), reported(None, None), None);
        assert_eq!(first.used, Some(1 << 40));
    }

    #[test]
    fn the_body_comes_first_and_a_rejected_body_figure_falls_back_to_the_header() {
        let both = accept_credits(
            reported(Some(3), Some(90)),
            reported(Some(4), Some(80)),
            None,
        );
        assert_eq!(
            (both.used, both.balance, both.implausible),
            (Some(3), Some(90), None)
        );
        let fallback = accept_credits(
            reported(Some(u64::MAX), None),
            reported(Some(4), Some(80)),
            Some(100),
        );
        assert_eq!((fallback.used, fallback.balance), (Some(4), Some(80)));
        assert!(fallback
            .implausible
            .is_some_and(|t| t.contains("above 2^53")));
        let headers_only = accept_credits(reported(None, None), reported(Some(2), None), None);
        assert_eq!(
            headers_only,
            AcceptedCredits {
                used: Some(2),
                ..Default::default()
            }
        );
    }
}
