//! Budget settlement: the client's reservation becomes the call's real cost, and the client's
//! budget gauges follow.

use super::{Entry, Sink};
use crate::budget::Budgets;
use crate::call::Ending;
use crate::metrics::Metrics;

pub struct BudgetSettlement {
    budgets: Budgets,
    metrics: Metrics,
}

impl BudgetSettlement {
    pub fn new(budgets: Budgets, metrics: Metrics) -> Self {
        Self { budgets, metrics }
    }
}

impl Sink for BudgetSettlement {
    fn record(&self, entry: &Entry<'_>) {
        let record = entry.record;
        let Some(reservation) = &record.reservation else {
            return;
        };
        match entry.credits.used {
            Some(used) => reservation.settle(used),
            // Answered but silent about its cost: charge what was expected, to stay safe.
            None if record.ending == Ending::Complete && record.status.is_success() => {
                reservation.settle(reservation.amount());
            }
            // Failed or refused: the reservation is released when the record is dropped.
            None => {}
        }
        if let Some(client) = &record.client {
            if let Some((spent, left)) = self.budgets.status(client) {
                self.metrics.budget(client.as_str(), spent, Some(left));
            }
        }
    }
}
