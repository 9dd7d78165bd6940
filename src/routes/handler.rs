//! The facade's operations as data: a `kind: facade` route names one as its `handler`, and the
//! route table carries it to the facade, which answers it. Here, not in the
//! facade, so that routes do not depend on the facade.

use crate::config::model::{RouteConfig, RouteKind};

/// The facade's operations; a `kind: facade` route names one as its `handler`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    InstancesList,
    InstancesCreate,
    InstancesGet,
    InstancesPatch,
    InstancesDelete,
    InstancesPoweron,
    InstancesPoweroff,
    InstancesReboot,
    InstancesSnapshot,
    TasksList,
    TasksGet,
}

impl Handler {
    pub const ALL: &'static [(&'static str, Handler)] = &[
        ("instances.list", Handler::InstancesList),
        ("instances.create", Handler::InstancesCreate),
        ("instances.get", Handler::InstancesGet),
        ("instances.patch", Handler::InstancesPatch),
        ("instances.delete", Handler::InstancesDelete),
        ("instances.poweron", Handler::InstancesPoweron),
        ("instances.poweroff", Handler::InstancesPoweroff),
        ("instances.reboot", Handler::InstancesReboot),
        ("instances.snapshot", Handler::InstancesSnapshot),
        ("tasks.list", Handler::TasksList),
        ("tasks.get", Handler::TasksGet),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, h)| *h == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// The handler of a configured route, checked: facade routes need a known one, other
    /// routes have none; only a mirror `GET` can be a `list`.
    pub fn for_route(rc: &RouteConfig) -> Result<Option<Handler>, String> {
        if rc.list && (rc.kind != RouteKind::Mirror || rc.method != "GET") {
            return Err("list: only a mirror GET route can be a list".into());
        }
        match (rc.kind, &rc.handler) {
            (RouteKind::Facade, Some(name)) => Self::ALL
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, h)| Some(*h))
                .ok_or_else(|| {
                    let known: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                    format!(
                        "handler: '{name}' is not a facade operation (known: {})",
                        known.join(", ")
                    )
                }),
            (RouteKind::Facade, None) => Err("handler: a facade route needs one".into()),
            (_, Some(_)) => Err("handler: only facade routes have a handler".into()),
            (_, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: RouteKind, handler: Option<&str>, list: bool) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            method: "GET".into(),
            path: "/v1/x".into(),
            kind,
            permission: None,
            json_body: false,
            handler: handler.map(str::to_string),
            list,
            schema: None,
            strict: None,
            rewrite: None,
        }
    }

    #[test]
    fn routes_name_known_handlers() {
        let ok = route(RouteKind::Facade, Some("tasks.get"), false);
        assert_eq!(Handler::for_route(&ok), Ok(Some(Handler::TasksGet)));
        for (r, needle) in [
            (
                route(RouteKind::Facade, Some("instances.explode"), false),
                "instances.explode",
            ),
            (route(RouteKind::Facade, None, false), "needs one"),
            (
                route(RouteKind::Mirror, Some("tasks.get"), false),
                "only facade",
            ),
            (route(RouteKind::Facade, Some("tasks.get"), true), "list:"),
        ] {
            let e = Handler::for_route(&r).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        for (name, h) in Handler::ALL {
            assert_eq!(h.name(), *name);
        }
    }
}
