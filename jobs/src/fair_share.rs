//! Max-min fair shares of a scarce app-wide budget between tenants.
//!
//! Every tenant with work due gets the same share of the window's budget, except that a tenant
//! that needs less keeps only what it needs and leaves the rest to the others (max-min fairness).
//! Calls already made in the window count and cannot be taken back: a tenant that spent more
//! than its share before the budget was known to be scarce keeps what it spent and gets no more.

use std::collections::BTreeMap;

/// One tenant's standing in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant {
    /// Calls already made in the window.
    pub used: u64,
    /// Calls it would make in all: those made plus those due now.
    pub demand: u64,
}

/// Splits `budget` max-min fairly: each claimant gets `min(demand, max(used, level))` with the
/// level as high as the budget allows; the units that level leaves over go one each to the
/// claimants still short of their demand at the level, fewest used first (ties: earlier first).
pub fn allocate(budget: u64, claimants: &[Claimant]) -> Vec<u64> {
    let at = |level: u64| -> Vec<u64> {
        claimants
            .iter()
            .map(|c| c.demand.max(c.used).min(c.used.max(level)))
            .collect()
    };
    let total = |level: u64| at(level).iter().sum::<u64>();
    let top = claimants.iter().map(|c| c.demand).max().unwrap_or(0);
    if total(0) >= budget {
        // Spent already (or exactly): nobody gets more than it used.
        return at(0);
    }
    // The highest level whose total fits the budget.
    let (mut fits, mut over) = (0, top + 1);
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if total(mid) <= budget {
            fits = mid;
        } else {
            over = mid;
        }
    }
    let mut shares = at(fits);
    let mut left = budget - shares.iter().sum::<u64>();
    let mut short: Vec<usize> = (0..claimants.len())
        .filter(|&i| shares[i] == fits && shares[i] < claimants[i].demand)
        .collect();
    short.sort_by_key(|&i| (claimants[i].used, i));
    for i in short {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

/// Whether `tenant` may make one more call: its calls so far plus this one stay within its fair
/// share of `budget` (the window's calls so far plus what is left). `used` is each tenant's calls
/// in the window; `due` each tenant's work due now, this call excluded.
pub fn may_call(tenant: &str, budget: u64, used: &[(String, u64)], due: &[(String, u64)]) -> bool {
    let mut standing: BTreeMap<&str, Claimant> = BTreeMap::new();
    for (t, n) in used {
        standing
            .entry(t)
            .or_insert(Claimant { used: 0, demand: 0 })
            .used += n;
    }
    for (t, n) in due {
        standing
            .entry(t)
            .or_insert(Claimant { used: 0, demand: 0 })
            .demand += n;
    }
    standing
        .entry(tenant)
        .or_insert(Claimant { used: 0, demand: 0 })
        .demand += 1;
    let names: Vec<&str> = standing.keys().copied().collect();
    let claimants: Vec<Claimant> = standing
        .values()
        .map(|c| Claimant {
            used: c.used,
            demand: c.used + c.demand,
        })
        .collect();
    let shares = allocate(budget, &claimants);
    let me = names.iter().position(|t| *t == tenant).unwrap_or_default();
    claimants[me].used < shares[me]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(used: u64, demand: u64) -> Claimant {
        Claimant { used, demand }
    }

    #[test]
    fn a_small_demand_is_met_in_full_and_the_rest_goes_to_the_large_one() {
        assert_eq!(allocate(10, &[c(4, 16), c(0, 3)]), [7, 3]);
        assert_eq!(allocate(12, &[c(0, 2), c(0, 5), c(0, 100)]), [2, 5, 5]);
    }

    #[test]
    fn enough_budget_meets_every_demand() {
        assert_eq!(allocate(30, &[c(4, 16), c(0, 3)]), [16, 3]);
        assert_eq!(allocate(5, &[]), Vec::<u64>::new());
    }

    #[test]
    fn leftover_units_go_to_the_least_served_first() {
        assert_eq!(allocate(10, &[c(0, 100), c(0, 100), c(0, 100)]), [4, 3, 3]);
        assert_eq!(allocate(10, &[c(2, 100), c(1, 100), c(0, 100)]), [3, 3, 4]);
    }

    #[test]
    fn calls_already_made_are_kept_and_an_overspent_window_gives_nobody_more() {
        // A spent 8 before the budget was known to be scarce: B still gets what is left.
        assert_eq!(allocate(10, &[c(8, 20), c(0, 3)]), [8, 2]);
        assert_eq!(allocate(10, &[c(12, 20), c(0, 3)]), [12, 0]);
    }

    #[test]
    fn a_tenant_over_its_share_waits_and_one_under_it_goes() {
        // a has made 8 of the window's 10 calls, b 1; b needs 2 in all, so a gets 8.
        let used = [("a".to_owned(), 8), ("b".to_owned(), 1)];
        let due = [("a".to_owned(), 9), ("b".to_owned(), 1)];
        assert!(!may_call("a", 10, &used, &due));
        assert!(may_call("b", 10, &used, &due));
        // A newcomer with nothing used gets its share too.
        assert!(may_call("c", 12, &used, &due));
        // Once the others need nothing more, a is free to use what they leave.
        assert!(may_call("a", 10, &used, &[("a".to_owned(), 9)]));
    }
}
