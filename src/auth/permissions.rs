//! Permissions and roles. Every permission a route names is interned to a bit; a role is the
//! set of bits its patterns (`instances:read`, `instances:*`, `*:read`, `*`) grant, so that the
//! check on the hot path is one AND.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub type PermissionId = u8;

const MAX_PERMISSIONS: usize = 128;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PermissionSet(u128);

impl PermissionSet {
    pub fn contains(&self, id: PermissionId) -> bool {
        self.0 & (1u128 << id) != 0
    }
    pub fn insert(&mut self, id: PermissionId) {
        self.0 |= 1u128 << id;
    }
    pub fn union(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 | other.0)
    }
}

/// Names of permissions in use, in the order they were interned.
#[derive(Debug, Default)]
pub struct PermissionRegistry {
    ids: HashMap<String, PermissionId>,
    names: Vec<String>,
}

impl PermissionRegistry {
    pub fn intern(&mut self, name: &str) -> Result<PermissionId, String> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        valid_permission(name, false)?;
        if self.names.len() >= MAX_PERMISSIONS {
            return Err(format!("more than {MAX_PERMISSIONS} distinct permissions"));
        }
        let id = self.names.len() as PermissionId;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        Ok(id)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The set a list of grant patterns covers.
    pub fn grant(&self, patterns: &[String]) -> PermissionSet {
        let mut set = PermissionSet::default();
        for (id, name) in self.names.iter().enumerate() {
            if patterns.iter().any(|p| pattern_matches(p, name)) {
                set.insert(id as PermissionId);
            }
        }
        set
    }
}

/// `resource:action`, lower case letters, digits and `_`; `*` allowed in patterns.
pub fn valid_permission(name: &str, pattern: bool) -> Result<(), String> {
    if pattern && name == "*" {
        return Ok(());
    }
    let ok_part = |p: &str| {
        (pattern && p == "*")
            || (!p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    };
    match name.split_once(':') {
        Some((r, a)) if ok_part(r) && ok_part(a) => Ok(()),
        _ => Err(format!(
            "'{name}' is not a permission of the form resource:action{}",
            if pattern {
                " (or a pattern with *)"
            } else {
                ""
            }
        )),
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (Some((pr, pa)), Some((nr, na))) = (pattern.split_once(':'), name.split_once(':')) else {
        return false;
    };
    (pr == "*" || pr == nr) && (pa == "*" || pa == na)
}

/// Roles resolved to permission sets.
#[derive(Debug, Default)]
pub struct Roles {
    sets: HashMap<String, PermissionSet>,
    patterns: BTreeMap<String, Vec<String>>,
}

impl Roles {
    pub fn build(
        roles: &BTreeMap<String, Vec<String>>,
        registry: &PermissionRegistry,
    ) -> Result<Roles, Vec<String>> {
        let mut errors = Vec::new();
        let mut sets = HashMap::new();
        for (name, patterns) in roles {
            for (i, p) in patterns.iter().enumerate() {
                if let Err(e) = valid_permission(p, true) {
                    errors.push(format!("roles.{name}[{i}]: {e}"));
                }
            }
            sets.insert(name.clone(), registry.grant(patterns));
        }
        if errors.is_empty() {
            Ok(Roles {
                sets,
                patterns: roles.clone(),
            })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, role: &str) -> Option<PermissionSet> {
        self.sets.get(role).copied()
    }

    pub fn contains(&self, role: &str) -> bool {
        self.sets.contains_key(role)
    }

    /// The permission set of a list of role names; unknown names grant nothing.
    pub fn union_of<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> PermissionSet {
        roles
            .into_iter()
            .filter_map(|r| self.get(r))
            .fold(PermissionSet::default(), PermissionSet::union)
    }

    pub fn patterns(&self) -> &BTreeMap<String, Vec<String>> {
        &self.patterns
    }
}

pub type SharedRoles = Arc<Roles>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_grant_what_they_say() {
        let mut reg = PermissionRegistry::default();
        let read = reg.intern("instances:read").unwrap();
        let power = reg.intern("instances:power").unwrap();
        let dread = reg.intern("disks:read").unwrap();
        let viewer = reg.grant(&["*:read".into()]);
        assert!(viewer.contains(read) && viewer.contains(dread) && !viewer.contains(power));
        let inst = reg.grant(&["instances:*".into()]);
        assert!(inst.contains(read) && inst.contains(power) && !inst.contains(dread));
        let all = reg.grant(&["*".into()]);
        assert!(all.contains(read) && all.contains(power) && all.contains(dread));
        assert!(reg.intern("Bad Perm").is_err());
        assert!(valid_permission("instances", true).is_err());
    }
}
