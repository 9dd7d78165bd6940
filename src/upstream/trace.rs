//! Tracing of the calls to OrionVM, as upstream sees them: a call begins (its `traceparent` is
//! sent with it) and ends (OrionVM's status, or why there was none). The spans themselves are
//! made by `crate::observe::trace`, which implements these traits; upstream never sees a span.
//! Without tracing (`tracing:` absent) nothing here is called: callers hold `None`.

use std::sync::Arc;

/// Which call to OrionVM a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// The caller's request, proxied (the mirror).
    Proxied,
    /// A call of the proxy's own (the facade's composites, coalesced reads).
    Own,
    /// A token fetch from OrionVM's token endpoint.
    Token,
}

/// Begins the spans of one request's calls to OrionVM.
pub trait CallTracer: Send + Sync + std::fmt::Debug {
    /// A call begins: `method` and `target` (the path OrionVM is asked for, without query) name
    /// its span.
    fn begin(&self, kind: CallKind, method: &str, target: &str) -> Box<dyn CallSpan>;
}

/// One call's span, from its start until [`CallSpan::end`] (or its drop, which ends it without
/// a status).
pub trait CallSpan: Send + Sync {
    /// The `traceparent` to send with the call: this span as the parent.
    fn traceparent(&self) -> &str;
    /// The call ended: OrionVM's status, or why there was none (`connect`, `timeout`, ...).
    fn end(self: Box<Self>, status: Option<u16>, failure: Option<&str>);
}

/// What callers hold: `None` when the request is not traced.
pub type Trace = Option<Arc<dyn CallTracer>>;
