//! Guest/host user and group ID translation: parses the reference virtiofsd's
//! `--translate-uid`/`--translate-gid` rules and its legacy `--uid-map`/`--gid-map` ranges, and
//! maps one ID each way ([`IdTranslation::to_host`], [`IdTranslation::to_guest`]).
//!
//! Pure: no I/O, no FUSE types. `export` applies it to request credentials, chown targets
//! and the attributes of replies; the CLI only hands the flag strings over.
//!
//! Rules (`TYPE:A:B:COUNT`, any one non-alphanumeric separator other than `-`/`_`):
//! `guest:GUEST:HOST:N` (guest range to host range), `host:HOST:GUEST:N` (host range to guest
//! range), `squash-guest:GUEST:HOST:N` (a guest range onto one host ID), `squash-host:HOST:GUEST:N`
//! (a host range onto one guest ID), `forbid-guest:GUEST:N` (those guest IDs may not own files:
//! EPERM), `map:GUEST:HOST:N` (both ways). IDs no rule covers map to themselves. Ranges of one
//! direction may not overlap.
//!
//! `--uid-map=:NS:HOST:N:` is the reference's user-namespace map: what the guest sees is the
//! namespace. Here it is applied by this module rather than by a user namespace, with the
//! namespace's rules for what is left out: a host ID outside every range shows as the overflow
//! ID (65534), and a guest ID outside every range cannot own a file (EINVAL, as `chown` to an
//! unmapped ID in a user namespace).

use std::fmt;
use std::str::FromStr;

/// What a user namespace shows for a host ID it does not map (`/proc/sys/kernel/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error("{rule:?}: unknown type {kind:?} (expected guest, host, squash-guest, squash-host, forbid-guest or map)")]
    UnknownType { rule: String, kind: String },
    #[error("{rule:?}: {kind} takes {expected} numbers after the type, found {found}")]
    FieldCount {
        rule: String,
        kind: String,
        expected: usize,
        found: usize,
    },
    #[error("{rule:?}: {field:?} is not an ID (a number from 0 to 4294967295)")]
    BadNumber { rule: String, field: String },
    #[error("{rule:?}: a count of 0 maps nothing")]
    ZeroCount { rule: String },
    #[error("{rule:?}: the range runs past the largest ID (4294967295)")]
    RangeOverflow { rule: String },
    #[error("{rule:?}: its {direction} range overlaps {other:?}")]
    Overlap {
        rule: String,
        direction: Direction,
        other: String,
    },
    #[error("{rule:?}: expected :NAMESPACE_ID:HOST_ID:COUNT: (colon first and last)")]
    BadUsernsMap { rule: String },
    #[error("--uid-map/--gid-map and --translate-uid/--translate-gid cannot be mixed for one ID kind; {rule:?} meets {other:?}")]
    MixedForms { rule: String, other: String },
}

/// Which way a rule maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    GuestToHost,
    HostToGuest,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::GuestToHost => "guest-to-host",
            Direction::HostToGuest => "host-to-guest",
        })
    }
}

/// One parsed rule, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRule {
    Guest { guest: u32, host: u32, count: u32 },
    Host { host: u32, guest: u32, count: u32 },
    SquashGuest { guest: u32, host: u32, count: u32 },
    SquashHost { host: u32, guest: u32, count: u32 },
    ForbidGuest { guest: u32, count: u32 },
    Map { guest: u32, host: u32, count: u32 },
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdRule::Guest { guest, host, count } => write!(f, "guest:{guest}:{host}:{count}"),
            IdRule::Host { host, guest, count } => write!(f, "host:{host}:{guest}:{count}"),
            IdRule::SquashGuest { guest, host, count } => {
                write!(f, "squash-guest:{guest}:{host}:{count}")
            }
            IdRule::SquashHost { host, guest, count } => {
                write!(f, "squash-host:{host}:{guest}:{count}")
            }
            IdRule::ForbidGuest { guest, count } => write!(f, "forbid-guest:{guest}:{count}"),
            IdRule::Map { guest, host, count } => write!(f, "map:{guest}:{host}:{count}"),
        }
    }
}

impl FromStr for IdRule {
    type Err = IdMapError;

    fn from_str(s: &str) -> Result<Self, IdMapError> {
        let rule = || s.to_string();
        let kind_len = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(s.len());
        let kind = s[..kind_len].to_ascii_lowercase();
        let rest = &s[kind_len..];
        let fields: Vec<&str> = match rest.chars().next() {
            Some(sep) => rest[sep.len_utf8()..].split(sep).collect(),
            None => Vec::new(),
        };
        let expected = match kind.as_str() {
            "guest" | "host" | "squash-guest" | "squash-host" | "map" => 3,
            "forbid-guest" => 2,
            _ => return Err(IdMapError::UnknownType { rule: rule(), kind }),
        };
        if fields.len() != expected {
            return Err(IdMapError::FieldCount {
                rule: rule(),
                kind,
                expected,
                found: fields.len(),
            });
        }
        let n = fields
            .iter()
            .map(|f| {
                f.parse::<u32>().map_err(|_| IdMapError::BadNumber {
                    rule: rule(),
                    field: f.to_string(),
                })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let (a, b, count) = (n[0], n[1], n[expected - 1]);
        Ok(match kind.as_str() {
            "guest" => IdRule::Guest {
                guest: a,
                host: b,
                count,
            },
            "host" => IdRule::Host {
                host: a,
                guest: b,
                count,
            },
            "squash-guest" => IdRule::SquashGuest {
                guest: a,
                host: b,
                count,
            },
            "squash-host" => IdRule::SquashHost {
                host: a,
                guest: b,
                count,
            },
            "forbid-guest" => IdRule::ForbidGuest { guest: a, count },
            _ => IdRule::Map {
                guest: a,
                host: b,
                count,
            },
        })
    }
}

/// Parses the legacy user-namespace form `:NS:HOST:COUNT:` into the bidirectional rule it
/// amounts to (`map:NS:HOST:COUNT`).
pub fn parse_userns_map(s: &str) -> Result<IdRule, IdMapError> {
    let bad = || IdMapError::BadUsernsMap {
        rule: s.to_string(),
    };
    let inner = s
        .strip_prefix(':')
        .and_then(|r| r.strip_suffix(':'))
        .ok_or_else(bad)?;
    let fields: Vec<&str> = inner.split(':').collect();
    if fields.len() != 3 {
        return Err(bad());
    }
    let n = fields
        .iter()
        .map(|f| {
            f.parse::<u32>().map_err(|_| IdMapError::BadNumber {
                rule: s.to_string(),
                field: f.to_string(),
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(IdRule::Map {
        guest: n[0],
        host: n[1],
        count: n[2],
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `start + k` maps to `base + k`.
    Range(u32),
    /// Every ID of the range maps to this one.
    Squash(u32),
    /// Refused.
    Forbid,
}

#[derive(Debug, Clone)]
struct Span {
    start: u32,
    /// Exclusive; u64 so a range may end at `u32::MAX` inclusive.
    end: u64,
    target: Target,
    rule: String,
}

/// A guest ID that may not be used on the host: the errno to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub i32);

/// One ID kind's translation (UIDs or GIDs), both directions.
#[derive(Debug, Clone, Default)]
pub struct IdTranslation {
    to_host: Vec<Span>,
    to_guest: Vec<Span>,
    /// The `--uid-map` form: unmapped host IDs show as [`OVERFLOW_ID`], unmapped guest IDs are
    /// refused with EINVAL. Otherwise unmapped IDs map to themselves.
    namespace: bool,
}

fn span(start: u32, count: u32, target: Target, rule: &IdRule) -> Result<Span, IdMapError> {
    if count == 0 {
        return Err(IdMapError::ZeroCount {
            rule: rule.to_string(),
        });
    }
    let end = start as u64 + count as u64;
    let target_end = match target {
        Target::Range(base) => base as u64 + count as u64,
        _ => 0,
    };
    if end > 1 << 32 || target_end > 1 << 32 {
        return Err(IdMapError::RangeOverflow {
            rule: rule.to_string(),
        });
    }
    Ok(Span {
        start,
        end,
        target,
        rule: rule.to_string(),
    })
}

fn insert(spans: &mut Vec<Span>, new: Span, direction: Direction) -> Result<(), IdMapError> {
    if let Some(old) = spans
        .iter()
        .find(|s| (s.start as u64) < new.end && (new.start as u64) < s.end)
    {
        return Err(IdMapError::Overlap {
            rule: new.rule,
            direction,
            other: old.rule.clone(),
        });
    }
    let at = spans.partition_point(|s| s.start < new.start);
    spans.insert(at, new);
    Ok(())
}

fn lookup(spans: &[Span], id: u32) -> Option<&Span> {
    let at = spans.partition_point(|s| s.start <= id);
    at.checked_sub(1)
        .map(|i| &spans[i])
        .filter(|s| (id as u64) < s.end)
}

impl IdTranslation {
    /// The translation the `--translate-*` rules describe.
    pub fn from_rules(rules: &[IdRule]) -> Result<Self, IdMapError> {
        let mut t = IdTranslation::default();
        for rule in rules {
            t.add(rule)?;
        }
        Ok(t)
    }

    /// The translation `--uid-map`/`--gid-map` ranges describe (user-namespace rules for
    /// unmapped IDs).
    pub fn from_namespace_maps(maps: &[IdRule]) -> Result<Self, IdMapError> {
        let mut t = Self::from_rules(maps)?;
        t.namespace = true;
        Ok(t)
    }

    /// Parses both flag forms for one ID kind; they may not be mixed.
    pub fn from_flags(translate: &[String], userns: &[String]) -> Result<Self, IdMapError> {
        if let (Some(rule), Some(other)) = (translate.first(), userns.first()) {
            return Err(IdMapError::MixedForms {
                rule: rule.clone(),
                other: other.clone(),
            });
        }
        if !userns.is_empty() {
            let maps = userns
                .iter()
                .map(|s| parse_userns_map(s))
                .collect::<Result<Vec<_>, _>>()?;
            return Self::from_namespace_maps(&maps);
        }
        let rules = translate
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<IdRule>, _>>()?;
        Self::from_rules(&rules)
    }

    fn add(&mut self, rule: &IdRule) -> Result<(), IdMapError> {
        use Direction::*;
        match *rule {
            IdRule::Guest { guest, host, count } => insert(
                &mut self.to_host,
                span(guest, count, Target::Range(host), rule)?,
                GuestToHost,
            ),
            IdRule::Host { host, guest, count } => insert(
                &mut self.to_guest,
                span(host, count, Target::Range(guest), rule)?,
                HostToGuest,
            ),
            IdRule::SquashGuest { guest, host, count } => insert(
                &mut self.to_host,
                span(guest, count, Target::Squash(host), rule)?,
                GuestToHost,
            ),
            IdRule::SquashHost { host, guest, count } => insert(
                &mut self.to_guest,
                span(host, count, Target::Squash(guest), rule)?,
                HostToGuest,
            ),
            IdRule::ForbidGuest { guest, count } => insert(
                &mut self.to_host,
                span(guest, count, Target::Forbid, rule)?,
                GuestToHost,
            ),
            IdRule::Map { guest, host, count } => {
                insert(
                    &mut self.to_host,
                    span(guest, count, Target::Range(host), rule)?,
                    GuestToHost,
                )?;
                insert(
                    &mut self.to_guest,
                    span(host, count, Target::Range(guest), rule)?,
                    HostToGuest,
                )
            }
        }
    }

    /// Whether every ID maps to itself (no rule given).
    pub fn is_identity(&self) -> bool {
        self.to_host.is_empty() && self.to_guest.is_empty() && !self.namespace
    }

    /// The host ID for a guest's ID, or the errno refusing it.
    pub fn to_host(&self, guest: u32) -> Result<u32, Refused> {
        match lookup(&self.to_host, guest) {
            Some(s) => match s.target {
                Target::Range(base) => Ok(base + (guest - s.start)),
                Target::Squash(id) => Ok(id),
                Target::Forbid => Err(Refused(libc::EPERM)),
            },
            None if self.namespace => Err(Refused(libc::EINVAL)),
            None => Ok(guest),
        }
    }

    /// The ID the guest is shown for a host ID.
    pub fn to_guest(&self, host: u32) -> u32 {
        match lookup(&self.to_guest, host) {
            Some(s) => match s.target {
                Target::Range(base) => base + (host - s.start),
                Target::Squash(id) => id,
                Target::Forbid => OVERFLOW_ID,
            },
            None if self.namespace => OVERFLOW_ID,
            None => host,
        }
    }
}

/// The UID and GID translations of one export.
#[derive(Debug, Clone, Default)]
pub struct IdMaps {
    pub uid: IdTranslation,
    pub gid: IdTranslation,
}

impl IdMaps {
    pub fn is_identity(&self) -> bool {
        self.uid.is_identity() && self.gid.is_identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(specs: &[&str]) -> Result<IdTranslation, IdMapError> {
        let rules = specs
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<IdRule>, _>>()?;
        IdTranslation::from_rules(&rules)
    }

    #[test]
    fn each_rule_type_maps_its_direction_and_leaves_the_rest_alone() {
        let t = rules(&["map:0:1000:10"]).unwrap();
        assert_eq!(t.to_host(0), Ok(1000));
        assert_eq!(t.to_host(9), Ok(1009));
        assert_eq!(t.to_host(10), Ok(10));
        assert_eq!(t.to_guest(1005), 5);
        assert_eq!(t.to_guest(999), 999);

        let t = rules(&["guest:5:500:2", "host:600:7:3"]).unwrap();
        assert_eq!(t.to_host(6), Ok(501));
        assert_eq!(t.to_guest(501), 501, "guest: maps one way only");
        assert_eq!(t.to_guest(602), 9);
        assert_eq!(t.to_host(9), Ok(9), "host: maps one way only");

        let t = rules(&["squash-guest:1000:65534:1000", "squash-host:0:3:100"]).unwrap();
        assert_eq!(t.to_host(1000), Ok(65534));
        assert_eq!(t.to_host(1999), Ok(65534));
        assert_eq!(t.to_host(2000), Ok(2000));
        assert_eq!(t.to_guest(0), 3);
        assert_eq!(t.to_guest(99), 3);
        assert_eq!(t.to_guest(100), 100);

        let t = rules(&["forbid-guest:0:1", "map:1:2000:5"]).unwrap();
        assert_eq!(t.to_host(0), Err(Refused(libc::EPERM)));
        assert_eq!(t.to_host(1), Ok(2000));
    }

    #[test]
    fn other_separators_and_case_are_accepted_as_the_reference_does() {
        let a = rules(&["MAP/0/1000/10"]).unwrap();
        assert_eq!(a.to_host(3), Ok(1003));
        let b = rules(&["squash-guest,0,7,4294967295"]).unwrap();
        assert_eq!(b.to_host(4294967294), Ok(7));
    }

    #[test]
    fn namespace_maps_show_overflow_and_refuse_unmapped_ids() {
        let maps = vec![parse_userns_map(":0:100000:65536:").unwrap()];
        let t = IdTranslation::from_namespace_maps(&maps).unwrap();
        assert_eq!(t.to_host(0), Ok(100000));
        assert_eq!(t.to_host(65535), Ok(165535));
        assert_eq!(t.to_host(65536), Err(Refused(libc::EINVAL)));
        assert_eq!(t.to_guest(100001), 1);
        assert_eq!(t.to_guest(0), OVERFLOW_ID);
        assert!(!t.is_identity());
        assert!(IdTranslation::default().is_identity());
    }

    #[test]
    fn bad_rules_are_refused_with_what_is_wrong() {
        let err = |s: &str| rules(&[s]).unwrap_err();
        assert!(matches!(err("swap:0:1:2"), IdMapError::UnknownType { .. }));
        assert!(matches!(
            err("map:0:1"),
            IdMapError::FieldCount { found: 2, .. }
        ));
        assert!(matches!(
            err("forbid-guest:0:1:2"),
            IdMapError::FieldCount { .. }
        ));
        assert!(matches!(
            err("map"),
            IdMapError::FieldCount { found: 0, .. }
        ));
        assert!(matches!(err("map:0:x:1"), IdMapError::BadNumber { .. }));
        assert!(matches!(err("map:0:1:-1"), IdMapError::BadNumber { .. }));
        assert!(matches!(
            err("map:0:1:4294967296"),
            IdMapError::BadNumber { .. }
        ));
        assert!(matches!(err("map:0:1:0"), IdMapError::ZeroCount { .. }));
        assert!(matches!(
            err("map:4294967295:0:2"),
            IdMapError::RangeOverflow { .. }
        ));
        assert!(matches!(
            err("guest:0:4294967295:2"),
            IdMapError::RangeOverflow { .. }
        ));
        let e = rules(&["map:0:1000:10", "squash-guest:5:0:1"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"squash-guest:5:0:1\": its guest-to-host range overlaps \"map:0:1000:10\""
        );
        // map's host side meets a host: rule.
        assert!(matches!(
            rules(&["host:1005:0:1", "map:0:1000:10"]).unwrap_err(),
            IdMapError::Overlap {
                direction: Direction::HostToGuest,
                ..
            }
        ));
        for bad in ["0:1:2", ":0:1:2", "0:1:2:", ":0:1::", ":a:1:2:"] {
            assert!(parse_userns_map(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            IdTranslation::from_flags(&["map:0:1:1".into()], &[":0:1:1:".into()]).unwrap_err(),
            IdMapError::MixedForms { .. }
        ));
    }

    proptest! {
        /// A map: rule is undone by the way back, for every ID of its range, and IDs outside
        /// it are untouched both ways.
        #[test]
        fn map_round_trips(guest in any::<u32>(), host in any::<u32>(), count in 1u32..1_000_000, k in any::<u32>(), other in any::<u32>()) {
            prop_assume!(guest as u64 + count as u64 <= 1 << 32);
            prop_assume!(host as u64 + count as u64 <= 1 << 32);
            let t = IdTranslation::from_rules(&[IdRule::Map { guest, host, count }]).unwrap();
            let g = guest + k % count;
            let h = t.to_host(g).unwrap();
            prop_assert!(h >= host && (h as u64) < host as u64 + count as u64);
            prop_assert_eq!(t.to_guest(h), g);
            if (other as u64) < guest as u64 || other as u64 >= guest as u64 + count as u64 {
                prop_assert_eq!(t.to_host(other), Ok(other));
            }
            if (other as u64) < host as u64 || other as u64 >= host as u64 + count as u64 {
                prop_assert_eq!(t.to_guest(other), other);
            }
        }

        /// Two guest-side ranges are accepted exactly when they do not overlap, and then each ID
        /// is mapped by the rule whose range holds it.
        #[test]
        fn ranges_are_accepted_only_when_disjoint(a in 0u32..10_000, an in 1u32..5_000, b in 0u32..10_000, bn in 1u32..5_000, probe in 0u32..20_000) {
            let r = IdTranslation::from_rules(&[
                IdRule::Guest { guest: a, host: 100_000, count: an },
                IdRule::SquashGuest { guest: b, host: 7, count: bn },
            ]);
            let overlap = a < b + bn && b < a + an;
            prop_assert_eq!(r.is_err(), overlap);
            if let Ok(t) = r {
                let want = if (a..a + an).contains(&probe) {
                    100_000 + (probe - a)
                } else if (b..b + bn).contains(&probe) {
                    7
                } else {
                    probe
                };
                prop_assert_eq!(t.to_host(probe), Ok(want));
            }
        }

        /// Whatever string arrives, parsing answers (no panic), and a parsed rule prints back
        /// to a string that parses to the same rule.
        #[test]
        fn parsing_never_panics_and_display_round_trips(s in "[a-z-]{0,14}[:/,]?[0-9:]{0,24}") {
            if let Ok(rule) = s.parse::<IdRule>() {
                prop_assert_eq!(rule.to_string().parse::<IdRule>(), Ok(rule));
            }
        }
    }
}
