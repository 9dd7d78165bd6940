//! Lists that page, filter and sort: the facade's own lists and the mirror's bare arrays when
//! the caller asks with query parameters. The whole list is fetched from OrionVM (which has no
//! pagination) and shaped here; `X-Total-Count` and `Link` (RFC 8288) describe the pages.

use super::FacadeError;
use serde_json::Value;
use std::cmp::Ordering;
use url::form_urlencoded;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

const PAGING: &[&str] = &["limit", "offset", "page", "per_page", "sort"];

/// Which filters and sort keys a list takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// Instances (and every mirror list): `state`, `region`, `name`, `name~` (or
    /// `name_contains`, its name in the API document), `memory_min`,
    /// `memory_max`; sort on name, state, memory, created_at.
    Instances,
    /// The facade's tasks: `status`, `type`, `instance_id`; sort on created_at, status, type.
    Tasks,
}

impl ListKind {
    pub fn filters(self) -> &'static [&'static str] {
        match self {
            ListKind::Instances => &[
                "state",
                "region",
                "name",
                "name~",
                "name_contains",
                "memory_min",
                "memory_max",
            ],
            ListKind::Tasks => &["status", "type", "instance_id"],
        }
    }

    pub fn sort_keys(self) -> &'static [&'static str] {
        match self {
            ListKind::Instances => &["name", "state", "memory", "created_at"],
            ListKind::Tasks => &["created_at", "status", "type"],
        }
    }

    /// Whether a query names any list parameter (the mirror answers untouched otherwise).
    pub fn asked(self, query: Option<&str>) -> bool {
        let Some(q) = query else { return false };
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| PAGING.contains(&k.as_ref()) || self.filters().contains(&k.as_ref()))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    /// One of these values, compared without case.
    OneOf(&'static str, Vec<String>),
    Region(Vec<String>),
    Contains(String),
    MemoryMin(u64),
    MemoryMax(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub field: String,
    pub descending: bool,
}

/// A parsed list query.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub limit: usize,
    pub offset: usize,
    /// The caller paged with `page`/`per_page`; links use the same words.
    pub by_page: bool,
    filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    /// The caller's other parameters, kept in the links.
    kept: Vec<(String, String)>,
}

fn bad(name: &str, msg: impl Into<String>) -> FacadeError {
    FacadeError::BadParameter {
        name: name.to_string(),
        message: msg.into(),
    }
}

fn number(name: &str, v: &str, min: usize, max: usize) -> Result<usize, FacadeError> {
    let n: usize = v
        .trim()
        .parse()
        .map_err(|_| bad(name, format!("'{v}' is not a whole number")))?;
    if n < min || n > max {
        return Err(bad(name, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn values(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl ListQuery {
    pub fn parse(kind: ListKind, query: Option<&str>) -> Result<ListQuery, FacadeError> {
        let mut seen: Vec<String> = Vec::new();
        let mut limit = None;
        let mut offset = None;
        let mut page = None;
        let mut per_page = None;
        let mut filters = Vec::new();
        let mut sort = Vec::new();
        let mut kept = Vec::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            if seen.contains(&k) {
                return Err(bad(&k, "is given more than once"));
            }
            seen.push(k.clone());
            match k.as_str() {
                "limit" => limit = Some(number("limit", &v, 1, MAX_LIMIT)?),
                "offset" => offset = Some(number("offset", &v, 0, usize::MAX)?),
                "page" => page = Some(number("page", &v, 1, usize::MAX / MAX_LIMIT)?),
                "per_page" => per_page = Some(number("per_page", &v, 1, MAX_LIMIT)?),
                "sort" => {
                    for part in v.split(',') {
                        let part = part.trim();
                        let (field, descending) = match part.strip_prefix('-') {
                            Some(f) => (f, true),
                            None => (part.strip_prefix('+').unwrap_or(part), false),
                        };
                        if !kind.sort_keys().contains(&field) {
                            return Err(bad(
                                "sort",
                                format!(
                                    "'{part}' is not a sort key (use {} with an optional '-')",
                                    kind.sort_keys().join(", ")
                                ),
                            ));
                        }
                        if sort.iter().any(|s: &SortKey| s.field == field) {
                            return Err(bad("sort", format!("'{field}' is given more than once")));
                        }
                        sort.push(SortKey {
                            field: field.to_string(),
                            descending,
                        });
                    }
                    kept.push((k, v));
                }
                f if kind.filters().contains(&f) => {
                    let filter = match f {
                        "memory_min" => Filter::MemoryMin(number(f, &v, 0, usize::MAX)? as u64),
                        "memory_max" => Filter::MemoryMax(number(f, &v, 0, usize::MAX)? as u64),
                        "region" => Filter::Region(values(&v)),
                        "name~" | "name_contains" if v.is_empty() => {
                            return Err(bad(f, "must not be empty"));
                        }
                        "name~" | "name_contains" => Filter::Contains(v.to_lowercase()),
                        "name" => Filter::OneOf("name", vec![v.clone()]),
                        "state" => Filter::OneOf("state", values(&v)),
                        "status" => Filter::OneOf("status", values(&v)),
                        "type" => Filter::OneOf("type", values(&v)),
                        _ => Filter::OneOf("instance_id", values(&v)),
                    };
                    if let Filter::OneOf(_, list) | Filter::Region(list) = &filter
                        && list.is_empty()
                    {
                        return Err(bad(f, "must not be empty"));
                    }
                    filters.push(filter);
                    kept.push((k, v));
                }
                other => {
                    let mut known: Vec<&str> = PAGING.to_vec();
                    known.extend(kind.filters());
                    return Err(bad(
                        other,
                        format!("is not a list parameter (known: {})", known.join(", ")),
                    ));
                }
            }
        }
        let by_page = page.is_some() || per_page.is_some();
        if by_page && (limit.is_some() || offset.is_some()) {
            let name = if page.is_some() { "page" } else { "per_page" };
            return Err(bad(name, "cannot be combined with limit/offset"));
        }
        let (limit, offset) = if by_page {
            let per = per_page.unwrap_or(DEFAULT_LIMIT);
            (per, (page.unwrap_or(1) - 1).saturating_mul(per))
        } else {
            (limit.unwrap_or(DEFAULT_LIMIT), offset.unwrap_or(0))
        };
        Ok(ListQuery {
            limit,
            offset,
            by_page,
            filters,
            sort,
            kept,
        })
    }

    fn keeps(&self, item: &Value) -> bool {
        self.filters.iter().all(|f| match f {
            Filter::OneOf(field, list) => item
                .get(*field)
                .and_then(Value::as_str)
                .is_some_and(|s| list.iter().any(|w| w.eq_ignore_ascii_case(s))),
            Filter::Region(list) => {
                let region = &item["region"];
                [&region["code"], &region["id"]]
                    .iter()
                    .filter_map(|v| v.as_str())
                    .any(|s| list.iter().any(|w| w.eq_ignore_ascii_case(s)))
            }
            Filter::Contains(part) => item
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.to_lowercase().contains(part)),
            Filter::MemoryMin(m) => item["memory"].as_u64().is_some_and(|v| v >= *m),
            Filter::MemoryMax(m) => item["memory"].as_u64().is_some_and(|v| v <= *m),
        })
    }

    fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for key in &self.sort {
            let o = compare_values(&a[key.field.as_str()], &b[key.field.as_str()]);
            let o = if key.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    /// Filters, sorts (stable: OrionVM's order breaks ties) and cuts one page.
    pub fn apply(&self, items: Vec<Value>) -> Page {
        let mut kept: Vec<Value> = items.into_iter().filter(|i| self.keeps(i)).collect();
        if !self.sort.is_empty() {
            kept.sort_by(|a, b| self.compare(a, b));
        }
        let total = kept.len();
        let items = kept
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .collect();
        Page { items, total }
    }

    /// `Link` header value (RFC 8288) for `path`: first, prev, next, last.
    pub fn link_header(&self, path: &str, total: usize) -> String {
        let last = if total == 0 {
            0
        } else {
            (total - 1) / self.limit * self.limit
        };
        let mut rels: Vec<(&str, usize)> = vec![("first", 0)];
        if self.offset > 0 {
            rels.push(("prev", self.offset.saturating_sub(self.limit).min(last)));
        }
        if self.offset.saturating_add(self.limit) < total {
            rels.push(("next", self.offset + self.limit));
        }
        rels.push(("last", last));
        rels.iter()
            .map(|(rel, off)| format!("<{}>; rel=\"{rel}\"", self.url(path, *off)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn url(&self, path: &str, offset: usize) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.kept {
            q.append_pair(k, v);
        }
        if self.by_page {
            q.append_pair("page", &(offset / self.limit + 1).to_string());
            q.append_pair("per_page", &self.limit.to_string());
        } else {
            q.append_pair("limit", &self.limit.to_string());
            q.append_pair("offset", &offset.to_string());
        }
        format!("{path}?{}", q.finish())
    }
}

/// Missing values sort first; numbers by value, strings by text, other kinds by kind.
fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => rank(a).cmp(&rank(b)),
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

pub struct Page {
    pub items: Vec<Value>,
    pub total: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(p: &Page) -> Vec<&str> {
        p.items
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect()
    }

    fn sample() -> Vec<Value> {
        vec![
            json!({"name": "b", "state": "running", "memory": 2048, "region": {"code": "SY3", "id": "r1"}}),
            json!({"name": "a", "state": "stopped", "memory": 1024, "region": {"code": "ME2", "id": "r2"}}),
            json!({"name": "c", "state": "running", "memory": 1024, "region": {"code": "SY3", "id": "r1"}}),
        ]
    }

    #[test]
    fn defaults_and_paging() {
        let q = ListQuery::parse(ListKind::Instances, None).unwrap();
        assert_eq!((q.limit, q.offset), (50, 0));
        let q = ListQuery::parse(ListKind::Instances, Some("page=3&per_page=10")).unwrap();
        assert_eq!((q.limit, q.offset, q.by_page), (10, 20, true));
        let p = ListQuery::parse(ListKind::Instances, Some("limit=2&offset=2"))
            .unwrap()
            .apply(sample());
        assert_eq!((names(&p), p.total), (vec!["c"], 3));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, name) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("offset=-1", "offset"),
            ("page=0", "page"),
            ("page=1&limit=5", "page"),
            ("sort=size", "sort"),
            ("sort=name,-name", "sort"),
            ("memory_min=lots", "memory_min"),
            ("colour=red", "colour"),
            ("state=", "state"),
            ("limit=1&limit=2", "limit"),
        ] {
            match ListQuery::parse(ListKind::Instances, Some(q)) {
                Err(FacadeError::BadParameter { name: n, .. }) => assert_eq!(n, name, "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    #[test]
    fn filters_and_multi_key_sort() {
        let q = ListQuery::parse(ListKind::Instances, Some("sort=memory,-name")).unwrap();
        assert_eq!(names(&q.apply(sample())), vec!["c", "a", "b"]);
        let q = ListQuery::parse(ListKind::Instances, Some("region=sy3&name~=B")).unwrap();
        assert_eq!(names(&q.apply(sample())), vec!["b"]);
        let q =
            ListQuery::parse(ListKind::Instances, Some("memory_max=1024&state=running")).unwrap();
        assert_eq!(names(&q.apply(sample())), vec!["c"]);
    }

    #[test]
    fn links() {
        let q =
            ListQuery::parse(ListKind::Instances, Some("state=running&limit=2&offset=2")).unwrap();
        assert_eq!(
            q.link_header("/v1/instances", 5),
            "</v1/instances?state=running&limit=2&offset=0>; rel=\"first\", \
             </v1/instances?state=running&limit=2&offset=0>; rel=\"prev\", \
             </v1/instances?state=running&limit=2&offset=4>; rel=\"next\", \
             </v1/instances?state=running&limit=2&offset=4>; rel=\"last\""
        );
        let q = ListQuery::parse(ListKind::Instances, Some("per_page=2")).unwrap();
        assert_eq!(
            q.link_header("/v1/instances", 0),
            "</v1/instances?page=1&per_page=2>; rel=\"first\", </v1/instances?page=1&per_page=2>; rel=\"last\""
        );
    }
}
