//! The simulated traffic: each population's requests by its rhythm, the
//! attacks' requests, sorted by time, from a deterministic generator.

use std::collections::HashMap;

use super::*;

/// A request in the simulation.
#[derive(Clone, Debug)]
pub(super) struct Request {
    pub(super) time_ms: i64,
    pub(super) identity: String,
    pub(super) node: String,
    pub(super) grant: String,
    pub(super) attack: Option<usize>,
}

/// splitmix64: small, deterministic, good enough for traffic.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    /// A Poisson draw (Knuth; fine for the small means used here).
    pub(super) fn poisson(&mut self, mean: f64) -> u32 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 50.0 {
            // Normal approximation.
            let u = self.unit().max(1e-12);
            let v = self.unit();
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            return (mean + z * mean.sqrt()).round().max(0.0) as u32;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.unit();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

pub(super) fn start_ms(date: &str) -> Result<i64, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(date, &format).map_err(|e| format!("start {date:?}: {e}"))?;
    Ok(day.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Intensity (0–1) of a rhythm at an hour of a weekday.
pub(super) fn intensity(p: &Population, weekday: u32, hour: u32) -> f64 {
    match p.rhythm {
        Rhythm::Business if weekday < 5 && (8..18).contains(&hour) => 1.0,
        Rhythm::Business if (10..16).contains(&hour) => 0.03,
        Rhythm::Daily if (8..20).contains(&hour) => 1.0,
        Rhythm::Daily => 0.25,
        Rhythm::Nightly if (1..4).contains(&hour) => 1.0,
        Rhythm::Weekly if weekday == p.weekday && (9..12).contains(&hour) => 1.0,
        _ => 0.0,
    }
}

pub(super) fn identity_name(population: &str, i: u32) -> String {
    format!("spiffe://sim/{population}/{i}")
}

pub(super) fn node_name(population: &str, k: u32) -> String {
    format!("spiffe://sim/mintguard/node/{population}-{k}")
}

/// Generates the traffic, sorted by time.
/// Each identity's entry: the grants it lists.
pub(super) type Entries = HashMap<String, Vec<String>>;

pub(super) fn traffic(s: &Scenario, t0: i64) -> Result<(Vec<Request>, Entries), String> {
    let mut rng = Rng(s.seed);
    let first_weekday = u32::try_from((t0.div_euclid(DAY_MS) + 3).rem_euclid(7)).unwrap_or(0);
    let mut out = Vec::new();
    let mut entries: Entries = HashMap::new();
    let at = |rng: &mut Rng, base: i64, span: i64| base + (rng.unit() * span as f64) as i64;
    for p in &s.populations {
        if p.grants.is_empty() || p.nodes == 0 {
            return Err(format!("population {}: needs grants and nodes", p.name));
        }
        for i in 0..p.count {
            let identity = identity_name(&p.name, i);
            let node = node_name(&p.name, i % p.nodes);
            entries.insert(identity.clone(), p.grants.clone());
            let pace = p.per_hour * (0.5 + rng.unit());
            for day in p.start_day..s.days {
                let weekday = (first_weekday + day) % 7;
                for hour in 0..24 {
                    let mean = pace * intensity(p, weekday, hour);
                    let base = t0 + i64::from(day) * DAY_MS + i64::from(hour) * HOUR_MS;
                    for _ in 0..rng.poisson(mean) {
                        let grant = p.grants[rng.below(p.grants.len())].clone();
                        out.push(Request {
                            time_ms: at(&mut rng, base, HOUR_MS),
                            identity: identity.clone(),
                            node: node.clone(),
                            grant,
                            attack: None,
                        });
                    }
                }
                if let Some(r) = &p.release
                    && weekday == r.weekday
                {
                    let base = t0 + i64::from(day) * DAY_MS + i64::from(r.hour) * HOUR_MS;
                    for _ in 0..r.requests {
                        out.push(Request {
                            time_ms: at(&mut rng, base, 20 * 60_000),
                            identity: identity.clone(),
                            node: node.clone(),
                            grant: p.grants[rng.below(p.grants.len())].clone(),
                            attack: None,
                        });
                    }
                }
            }
        }
        if let Some(o) = &p.oncall {
            let mut day = f64::from(p.start_day) + o.every_days * rng.unit();
            while day < f64::from(s.days) {
                let i = u32::try_from(rng.below(p.count as usize)).unwrap_or(0);
                let base = t0 + (day.floor() as i64) * DAY_MS + (rng.below(5) as i64) * HOUR_MS;
                for _ in 0..o.requests {
                    out.push(Request {
                        time_ms: at(&mut rng, base, 30 * 60_000),
                        identity: identity_name(&p.name, i),
                        node: node_name(&p.name, i % p.nodes),
                        grant: p.grants[rng.below(p.grants.len())].clone(),
                        attack: None,
                    });
                }
                day += o.every_days * (0.5 + rng.unit());
            }
        }
    }
    for (index, a) in s.attacks.iter().enumerate() {
        let start = t0 + (a.day * DAY_MS as f64) as i64;
        let span = (a.duration_minutes * 60_000.0) as i64;
        let target = || -> Result<(String, String, Vec<String>), String> {
            let (population, i) = a
                .target
                .split_once('/')
                .ok_or_else(|| format!("attack {}: target is population/index", a.name))?;
            let p = s
                .populations
                .iter()
                .find(|p| p.name == population)
                .ok_or_else(|| format!("attack {}: no population {population}", a.name))?;
            let i: u32 = i
                .parse()
                .map_err(|_| format!("attack {}: bad index", a.name))?;
            Ok((
                identity_name(population, i),
                node_name(population, i % p.nodes),
                p.grants.clone(),
            ))
        };
        let mut push = |time_ms, identity: &str, node: &str, grant: &str| {
            out.push(Request {
                time_ms,
                identity: identity.to_owned(),
                node: node.to_owned(),
                grant: grant.to_owned(),
                attack: Some(index),
            });
        };
        match a.kind {
            AttackKind::Burst | AttackKind::Probing => {
                let (identity, node, own) = target()?;
                let grants = if a.kind == AttackKind::Burst {
                    own
                } else {
                    a.grants.clone()
                };
                let n = (a.per_minute * a.duration_minutes).round() as u64;
                for k in 0..n {
                    let t = start
                        + span * i64::try_from(k).unwrap_or(0) / i64::try_from(n).unwrap_or(1);
                    push(t, &identity, &node, &grants[rng.below(grants.len())]);
                }
            }
            AttackKind::Fanout => {
                let node = format!("spiffe://sim/mintguard/node/{}", a.target);
                let n = (a.per_minute * a.duration_minutes).round() as u64;
                for k in 0..n {
                    let who = k % u64::from(a.identities.max(1));
                    let identity = format!("spiffe://sim/dormant/{}/{who}", a.target);
                    entries.insert(identity.clone(), vec![s.grants[0].name.clone()]);
                    let t = start
                        + span * i64::try_from(k).unwrap_or(0) / i64::try_from(n).unwrap_or(1);
                    push(t, &identity, &node, &s.grants[0].name);
                }
            }
            AttackKind::Accumulation => {
                let (identity, node, _) = target()?;
                if let Some(list) = entries.get_mut(&identity) {
                    list.extend(a.grants.iter().cloned());
                }
                let mut t = start;
                for grant in &a.grants {
                    for _ in 0..3 {
                        push(at(&mut rng, t, HOUR_MS), &identity, &node, grant);
                    }
                    t += (a.every_hours * HOUR_MS as f64) as i64;
                }
            }
            AttackKind::OffHours => {
                let (identity, node, _) = target()?;
                if let Some(list) = entries.get_mut(&identity) {
                    list.extend(a.grants.iter().cloned());
                }
                for k in 0..a.requests {
                    let grant = &a.grants[(k as usize) % a.grants.len().max(1)];
                    push(at(&mut rng, start, span.max(1)), &identity, &node, grant);
                }
            }
        }
    }
    out.sort_by_key(|r| r.time_ms);
    Ok((out, entries))
}
