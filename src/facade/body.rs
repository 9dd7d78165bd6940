//! The facade's request bodies as typed, strict structs. Their JSON Schemas (derived with
//! schemars) are also the request schemas of the OpenAPI document.

use super::FacadeError;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// `POST /v1/instances`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// The instance's name.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// Memory in MB.
    #[schemars(range(min = 512))]
    pub memory: u64,
    /// Region code (`SY3`) or id.
    pub region: String,
    /// Template slug (`ubuntu-22-04`) or id, in the region.
    pub template: String,
    /// Instance performance tier name (`Standard`) or id, in the region; OrionVM's default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_tier: Option<String>,
    /// Size of the boot disk in GB.
    #[serde(default = "default_disk_size")]
    #[schemars(range(min = 1))]
    pub size: u64,
    /// Public keys by id or name.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Give the instance a public address (a private one otherwise).
    #[serde(default = "yes")]
    pub allocate_public_ip: bool,
    /// Start the instance once it is provisioned.
    #[serde(default)]
    pub start: bool,
}

fn default_disk_size() -> u64 {
    20
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Virtualization {
    Hvm,
    Pv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    Disk,
    Cdrom,
    Network,
}

/// One network adapter in a patch.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterPatch {
    /// Network id.
    pub network: String,
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// IP address ids on that network.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
}

/// `PATCH /v1/instances/{id}`: a JSON merge patch (RFC 7396) onto the instance's changeable
/// fields. A member that is absent stays; `null` removes (lists become empty; the other fields
/// cannot be removed); lists replace the whole list. Memory, performance tier, virtualization
/// and disks change only while the instance is stopped.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancePatch {
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(min = 1, max = 255))]
    pub hostname: Option<Option<String>>,
    /// Memory in MB.
    #[serde(default, deserialize_with = "present")]
    #[schemars(range(min = 512))]
    pub memory: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub virtualization: Option<Option<Virtualization>>,
    #[serde(default, deserialize_with = "present")]
    pub boot_device: Option<Option<BootDevice>>,
    #[serde(default, deserialize_with = "present")]
    pub start_on_shutdown: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    pub start_on_reboot: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    pub start_on_crash: Option<Option<bool>>,
    /// Instance performance tier name or id, in the instance's region.
    #[serde(default, deserialize_with = "present")]
    pub performance_tier: Option<Option<String>>,
    /// Public keys by id or name (the whole list).
    #[serde(default, deserialize_with = "present")]
    pub public_keys: Option<Option<Vec<String>>>,
    /// Disk ids in boot order (the whole list).
    #[serde(default, deserialize_with = "present")]
    pub disks: Option<Option<Vec<String>>>,
    /// Network adapters (the whole list).
    #[serde(default, deserialize_with = "present")]
    pub network_adapters: Option<Option<Vec<AdapterPatch>>>,
    /// Instance ids kept on other hosts than this one (the whole list).
    #[serde(default, deserialize_with = "present")]
    pub availability_group: Option<Option<Vec<String>>>,
}

/// Present members are `Some`, so that `null` (`Some(None)`) differs from absent (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Some(Option::<T>::deserialize(d)?))
}

/// `POST /v1/instances/{id}/snapshot` (the body is optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Prefix of the snapshot disks' names; the instance's name when absent.
    #[serde(default)]
    #[schemars(length(min = 1, max = 200))]
    pub name: Option<String>,
}

/// The request's body as `T`: the value the route's schema already checked (`validate`), else
/// the bytes read in `request_filter`. Every problem is a 422 naming the member's path.
pub fn from_request<T: for<'de> Deserialize<'de>>(
    body: super::Body<'_>,
    empty_ok: bool,
) -> Result<T, FacadeError> {
    let blank = body
        .bytes
        .is_none_or(|b| b.iter().all(u8::is_ascii_whitespace));
    match body.validated {
        _ if blank && !empty_ok => Err(FacadeError::invalid("(body)", "a JSON object is required")),
        Some(v) => from_value(v.value.clone()),
        None => parse(body.bytes, empty_ok),
    }
}

fn from_value<T: for<'de> Deserialize<'de>>(value: serde_json::Value) -> Result<T, FacadeError> {
    serde_path_to_error::deserialize(value).map_err(path_error)
}

fn path_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> FacadeError {
    let path = e.path().to_string();
    let path = if path == "." { "(body)".into() } else { path };
    let msg = e.inner().to_string();
    let msg = msg.split(" at line").next().unwrap_or(&msg).to_string();
    FacadeError::invalid(&path, &msg)
}

/// Parses a body into `T`; every problem is a 422 naming the member's path.
pub fn parse<T: for<'de> Deserialize<'de>>(
    body: Option<&[u8]>,
    empty_ok: bool,
) -> Result<T, FacadeError> {
    let bytes = match body {
        Some(b) if !b.iter().all(u8::is_ascii_whitespace) => b,
        _ if empty_ok => b"{}",
        _ => {
            return Err(FacadeError::invalid("(body)", "a JSON object is required"));
        }
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(path_error)
}

/// Checks the values serde cannot: lengths and ranges.
pub fn check_create(c: &CreateInstance) -> Result<(), FacadeError> {
    let mut errs = Vec::new();
    if c.name.trim().is_empty() || c.name.len() > 255 {
        errs.push(("name", "must be 1 to 255 characters".to_string()));
    }
    if c.memory < 512 {
        errs.push((
            "memory",
            format!("{} is less than the minimum of 512", c.memory),
        ));
    }
    if c.size == 0 {
        errs.push(("size", "must be at least 1".to_string()));
    }
    FacadeError::invalid_all(errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_null_from_absent() {
        let p: InstancePatch =
            parse(Some(br#"{"name": "x", "public_keys": null}"#), false).unwrap();
        assert_eq!(p.name, Some(Some("x".into())));
        assert_eq!(p.public_keys, Some(None));
        assert_eq!(p.memory, None);
    }

    #[test]
    fn unknown_and_mistyped_members_are_named() {
        match parse::<InstancePatch>(Some(br#"{"colour": 1}"#), false) {
            Err(FacadeError::Invalid(list)) => assert!(list[0].1.contains("colour"), "{list:?}"),
            other => panic!("{other:?}"),
        }
        match parse::<CreateInstance>(
            Some(br#"{"name":"a","memory":"lots","region":"SY3","template":"t"}"#),
            false,
        ) {
            Err(FacadeError::Invalid(list)) => assert_eq!(list[0].0, "memory"),
            other => panic!("{other:?}"),
        }
    }
}
