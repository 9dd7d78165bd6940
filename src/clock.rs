//! Wall-clock time in the one text form the proxy writes: RFC 3339 UTC with milliseconds
//! (`2016-05-10T03:36:34.615Z`), which is OrionVM's own timestamp form and what ECS
//! `@timestamp` wants. Used by the access log, the audit trail, facade tasks and the endpoint
//! stats, so that every time a reader sees has one shape.

use std::time::SystemTime;

/// `t` as `2016-05-10T03:36:34.615Z`.
pub fn timestamp(t: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Now, as [`timestamp`] writes it.
pub fn now_text() -> String {
    timestamp(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn milliseconds_in_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_462_851_394_615);
        assert_eq!(timestamp(t), "2016-05-10T03:36:34.615Z");
    }
}
