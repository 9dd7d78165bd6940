//! Who administers what on the admin listener (and the console on it): the one place that
//! decides it.
//!
//! - A principal with the `process_admin` role administers the process: every tenant's audit,
//!   usage and config entries, endpoint statistics, reloads.
//! - A principal with the `admin` role (and not `process_admin`) administers its own tenant
//!   only: it sees and exports that tenant's audit records, usage and config entries, and may
//!   not reload or see what tenants share (endpoint statistics, JWT issuers).
//! - Anyone else is refused.
//!
//! Tenant administrators are the safe default: a config written before tenant scoping, whose
//! tenants' admins have the `admin` role, gives them their own tenant and nothing else.

use super::principal::Principal;
use std::sync::Arc;

/// The role of a process administrator.
pub const PROCESS_ADMIN_ROLE: &str = "process_admin";
/// The role of a tenant administrator (of the principal's tenant).
pub const TENANT_ADMIN_ROLE: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminScope {
    Process,
    Tenant(Arc<str>),
}

/// Why an administrator was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// Neither an admin nor a process admin.
    NotAdmin,
    /// The operation concerns the whole process (`what`), and the caller administers a tenant.
    ProcessOnly { what: &'static str },
    /// The caller asked for another tenant than its own.
    OtherTenant { asked: String, own: Arc<str> },
}

impl AdminScope {
    /// The scope of `principal` on the admin listener, if any.
    pub fn of(principal: &Principal) -> Result<AdminScope, ScopeError> {
        if principal.has_role(PROCESS_ADMIN_ROLE) {
            Ok(AdminScope::Process)
        } else if principal.has_role(TENANT_ADMIN_ROLE) {
            Ok(AdminScope::Tenant(principal.tenant.clone()))
        } else {
            Err(ScopeError::NotAdmin)
        }
    }

    pub fn is_process(&self) -> bool {
        matches!(self, AdminScope::Process)
    }

    /// Whether entries of `tenant` are visible in this scope.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            AdminScope::Process => true,
            AdminScope::Tenant(own) => &**own == tenant,
        }
    }

    /// Refuses an operation on the whole process (`what`: "reload", "endpoint statistics")
    /// to a tenant administrator.
    pub fn require_process(&self, what: &'static str) -> Result<(), ScopeError> {
        match self {
            AdminScope::Process => Ok(()),
            AdminScope::Tenant(_) => Err(ScopeError::ProcessOnly { what }),
        }
    }

    /// A listing's query string (`?tenant=...&...`) confined to this scope: a process admin's
    /// as it came; a tenant admin's with `tenant` set to its own (asking for another tenant is
    /// refused, not silently narrowed).
    pub fn confine_query(&self, query: Option<&str>) -> Result<Option<String>, ScopeError> {
        let AdminScope::Tenant(own) = self else {
            return Ok(query.map(str::to_string));
        };
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if k == "tenant" {
                if *v != **own {
                    return Err(ScopeError::OtherTenant {
                        asked: v.into_owned(),
                        own: own.clone(),
                    });
                }
                continue;
            }
            out.append_pair(&k, &v);
        }
        out.append_pair("tenant", own);
        Ok(Some(out.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permissions::PermissionSet;
    use crate::auth::principal::CredentialKind;

    fn principal(roles: &[&str], tenant: &str) -> Principal {
        Principal {
            id: "key:t".into(),
            kind: CredentialKind::ApiKey,
            roles: roles.iter().map(|r| Arc::from(*r)).collect(),
            tenant: tenant.into(),
            permissions: PermissionSet::default(),
            policy: None,
        }
    }

    #[test]
    fn roles_give_the_scope() {
        assert_eq!(
            AdminScope::of(&principal(&["admin", "process_admin"], "acme")),
            Ok(AdminScope::Process)
        );
        assert_eq!(
            AdminScope::of(&principal(&["admin"], "globex")),
            Ok(AdminScope::Tenant("globex".into()))
        );
        assert_eq!(
            AdminScope::of(&principal(&["operator"], "acme")),
            Err(ScopeError::NotAdmin)
        );
    }

    #[test]
    fn a_tenant_admin_s_listings_are_confined_to_its_tenant() {
        let globex = AdminScope::Tenant("globex".into());
        assert_eq!(
            globex.confine_query(Some("limit=5")).unwrap().as_deref(),
            Some("limit=5&tenant=globex")
        );
        assert_eq!(
            globex.confine_query(None).unwrap().as_deref(),
            Some("tenant=globex")
        );
        assert_eq!(
            globex
                .confine_query(Some("tenant=globex&format=csv"))
                .unwrap()
                .as_deref(),
            Some("format=csv&tenant=globex")
        );
        assert!(matches!(
            globex.confine_query(Some("tenant=acme")),
            Err(ScopeError::OtherTenant { .. })
        ));
        assert!(globex.require_process("reload").is_err());
        assert!(globex.sees("globex") && !globex.sees("acme"));
        let process = AdminScope::Process;
        assert_eq!(
            process
                .confine_query(Some("tenant=acme"))
                .unwrap()
                .as_deref(),
            Some("tenant=acme")
        );
        assert!(process.require_process("reload").is_ok() && process.sees("acme"));
    }
}
