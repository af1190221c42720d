//! Stable kernel ids for classes and interfaces. Counters, policer state and link budgets are
//! indexed by these ids, so a class or interface keeps its id for as long as it exists, across
//! reloads and daemon restarts, whatever its position in the file.

use std::collections::BTreeMap;

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
    let mut map = BTreeMap::new();
    let mut ids = Vec::with_capacity(names.len());
    let mut fresh = Vec::new();
    let mut taken: std::collections::BTreeSet<u32> = old.values().copied().collect();
    let mut next = first;
    for name in names {
        let id = match old.get(*name) {
            Some(id) => *id,
            None => {
                while taken.contains(&next) {
                    next += 1;
                }
                if next >= end {
                    return Err(format!(
                        "no free {what} id: at most {} at a time, counting those removed by this change",
                        end - first
                    ));
                }
                taken.insert(next);
                fresh.push(next);
                next
            }
        };
        map.insert(name.to_string(), id);
        ids.push(id);
    }
    Ok((map, ids, fresh))
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
        // "rdma" was removed this time: its id 1 is not reused until the next change.
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
    fn running_out_of_ids_is_an_error_naming_the_kind() {
        let names: Vec<String> = (0..MAX_CLASSES).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (full, _, _) = allocate(&BTreeMap::new(), &refs, 0, MAX_CLASSES as u32, "class")
            .expect("exactly full fits");
        let err =
            allocate(&full, &["another"], 0, MAX_CLASSES as u32, "class").expect_err("no room");
        assert!(err.contains("no free class id"), "{err}");
    }
}
