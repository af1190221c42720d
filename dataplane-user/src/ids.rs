//! Stable kernel ids for classes and interfaces. Counters, policer state and link budgets are
//! indexed by these ids, so a class or interface keeps its id for as long as it exists, across
//! reloads and daemon restarts, whatever its position in the file.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::{MAX_CLASSES, MAX_IFACES};
use serde::{Deserialize, Serialize};

use crate::config::Policy;

/// Name -> id of every class and interface currently known to the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// Class name -> class id (0..MAX_CLASSES).
    pub classes: BTreeMap<String, u32>,
    /// Interface name -> interface slot (1..MAX_IFACES; 0 counts unregistered interfaces).
    pub ifaces: BTreeMap<String, u32>,
}

/// The ids of one policy, in its own order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Kernel class id of `policy.classes[i]`.
    pub class_ids: Vec<u32>,
    /// Kernel slot of `policy.interfaces[i]`.
    pub policy_iface_slots: Vec<u32>,
    /// Every interface to register: the policy's, then attached ones it does not name.
    pub ifaces: Vec<(String, u32)>,
    /// Ids given out now for the first time (their counters and policer state start at zero).
    pub fresh_classes: Vec<u32>,
    /// Slots given out now for the first time.
    pub fresh_ifaces: Vec<u32>,
}

impl Ids {
    /// Ids for `policy` and the `attached` interfaces. Names already known keep their ids; a
    /// new name gets the lowest id that is neither in use nor freed by this same change (the
    /// old generation may still be counting under a freed id until the switch).
    pub fn assign(
        &self,
        policy: &Policy,
        attached: &[String],
    ) -> Result<(Ids, Assignment), String> {
        let class_names: Vec<&str> = policy.classes.iter().map(|c| c.name.as_str()).collect();
        let (classes, class_ids, fresh_classes) =
            allocate(&self.classes, &class_names, 0, MAX_CLASSES as u32, "class")?;
        let mut iface_names: Vec<&str> =
            policy.interfaces.iter().map(|i| i.name.as_str()).collect();
        for a in attached {
            if !iface_names.contains(&a.as_str()) {
                iface_names.push(a);
            }
        }
        let (ifaces, slots, fresh_ifaces) = allocate(
            &self.ifaces,
            &iface_names,
            1,
            MAX_IFACES as u32,
            "interface",
        )?;
        let assignment = Assignment {
            class_ids,
            policy_iface_slots: slots[..policy.interfaces.len()].to_vec(),
            ifaces: iface_names
                .iter()
                .zip(&slots)
                .map(|(n, s)| (n.to_string(), *s))
                .collect(),
            fresh_classes,
            fresh_ifaces,
        };
        Ok((Ids { classes, ifaces }, assignment))
    }

    /// Name of class id `id`.
    pub fn class_name(&self, id: u32) -> Option<&str> {
        self.classes
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }
}

type Allocated = (BTreeMap<String, u32>, Vec<u32>, Vec<u32>);

fn allocate(
    old: &BTreeMap<String, u32>,
    names: &[&str],
    first: u32,
    end: u32,
    what: &str,
) -> Result<Allocated, String> {
    let kept: BTreeSet<u32> = names.iter().filter_map(|n| old.get(*n)).copied().collect();
    // Ids never used before come first; ids of names this change removes only when no other
    // is left (their counters and policer state are zeroed like any fresh id's), so a policy
    // of the full size always fits.
    let never_used = (first..end).filter(|id| !old.values().any(|v| v == id));
    let retired: Vec<u32> = old
        .values()
        .copied()
        .filter(|id| !kept.contains(id) && (first..end).contains(id))
        .collect();
    let mut free = never_used.chain(retired);
    let mut map = BTreeMap::new();
    let mut ids = Vec::with_capacity(names.len());
    let mut fresh = Vec::new();
    for name in names {
        let id = match old.get(*name) {
            Some(id) => *id,
            None => {
                let id = free.next().ok_or_else(|| {
                    format!("no free {what} id: at most {} at a time", end - first)
                })?;
                fresh.push(id);
                id
            }
        };
        map.insert(name.to_string(), id);
        ids.push(id);
    }
    Ok((map, ids, fresh))
}

impl Ids {
    /// Drops entries a state file should never hold (an id out of range, or one id given to
    /// two names); their names get fresh ids at the next apply. Returns what was dropped.
    pub fn repair(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        for (what, map, first, end) in [
            ("class", &mut self.classes, 0, MAX_CLASSES as u32),
            ("interface", &mut self.ifaces, 1, MAX_IFACES as u32),
        ] {
            let mut seen = BTreeSet::new();
            map.retain(|name, id| {
                let ok = (first..end).contains(id) && seen.insert(*id);
                if !ok {
                    dropped.push(format!("{what} {name:?} with id {id}"));
                }
                ok
            });
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(classes: &[&str]) -> Policy {
        let mut text = String::from("default_class = \"default\"\n");
        for c in classes {
            text += &format!("[[class]]\nname = \"{c}\"\n");
        }
        Policy::from_toml_str(&text, "test").expect("valid")
    }

    #[test]
    fn known_names_keep_their_ids_whatever_their_position() {
        let (ids, a) = Ids::default()
            .assign(&policy(&["default", "rdma", "storage"]), &["eth0".into()])
            .expect("assign");
        assert_eq!(a.class_ids, vec![0, 1, 2]);
        assert_eq!(a.fresh_classes, vec![0, 1, 2]);
        assert_eq!(a.ifaces, vec![("eth0".to_string(), 1)]);
        let (ids2, b) = ids
            .assign(&policy(&["new", "storage", "default"]), &["eth0".into()])
            .expect("assign");
        // "rdma" was removed this time: its id 1 is not reused while others are free.
        assert_eq!(b.class_ids, vec![3, 2, 0]);
        assert_eq!(b.fresh_classes, vec![3]);
        assert!(b.fresh_ifaces.is_empty());
        let (_, c) = ids2
            .assign(&policy(&["new", "storage", "default", "later"]), &[])
            .expect("assign");
        assert_eq!(c.class_ids, vec![3, 2, 0, 1]);
        assert_eq!(ids2.class_name(3), Some("new"));
    }

    #[test]
    fn a_full_policy_fits_after_any_change_and_more_is_an_error() {
        let names = |prefix: &str| -> Vec<String> {
            (0..MAX_CLASSES).map(|i| format!("{prefix}{i}")).collect()
        };
        let (a, b) = (names("a"), names("b"));
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let (full, _, _) = allocate(&BTreeMap::new(), &refs(&a), 0, MAX_CLASSES as u32, "class")
            .expect("exactly full fits");
        // Half the classes replaced by new ones: the removed ones' ids are reused.
        let mixed: Vec<&str> = a[..128]
            .iter()
            .chain(&b[..128])
            .map(String::as_str)
            .collect();
        let (_, ids, fresh) =
            allocate(&full, &mixed, 0, MAX_CLASSES as u32, "class").expect("fits");
        assert_eq!(fresh.len(), 128);
        let unique: BTreeSet<u32> = ids.iter().copied().collect();
        assert_eq!(unique.len(), 256, "no id given twice");
        let mut too_many = refs(&b);
        too_many.push("one-more");
        let err = allocate(&full, &too_many, 0, MAX_CLASSES as u32, "class").expect_err("no room");
        assert!(err.contains("no free class id"), "{err}");
    }

    #[test]
    fn repair_drops_duplicate_and_out_of_range_ids() {
        let mut ids = Ids::default();
        ids.classes.insert("a".into(), 3);
        ids.classes.insert("b".into(), 3);
        ids.classes.insert("c".into(), 9999);
        ids.ifaces.insert("eth0".into(), 0);
        ids.ifaces.insert("eth1".into(), 2);
        let dropped = ids.repair();
        assert_eq!(dropped.len(), 3, "{dropped:?}");
        assert_eq!(ids.classes.len(), 1);
        assert_eq!(ids.ifaces.keys().collect::<Vec<_>>(), vec!["eth1"]);
        assert!(ids.repair().is_empty(), "repaired state stays");
    }
}
