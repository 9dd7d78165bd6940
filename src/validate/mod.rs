//! Request bodies: read whole within a limit, parsed once, before anything goes upstream.

pub mod body;
