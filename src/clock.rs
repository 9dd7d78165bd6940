//! Wall-clock time in the one text form the proxy writes: RFC 3339 UTC with milliseconds
//! (`2016-05-10T03:36:34.615Z`), which is OrionVM's own timestamp form and what ECS
//! `@timestamp` wants. Used by the access log, the audit trail, facade tasks and the endpoint
//! stats, so that every time a reader sees has one shape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as `2016-05-10T03:36:34.615Z`. Written digit by digit from the civil date of the day
/// number (every access-log line has one: the `time` crate's formatter costs about 2,000
/// instructions a call, this about a hundred); the `time` crate for dates it does not cover.
pub fn timestamp(t: SystemTime) -> String {
    String::from_utf8_lossy(&timestamp_bytes(t)).into_owned()
}

/// [`timestamp`] as its 24 ASCII bytes, for writers that copy it (the access log).
pub fn timestamp_bytes(t: SystemTime) -> [u8; 24] {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() < MAX_FAST_SECONDS => fast(d),
        _ => slow(t),
    }
}

/// Year 10000: four-digit years only.
const MAX_FAST_SECONDS: u64 = 253_402_300_800;

fn fast(d: Duration) -> [u8; 24] {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 3, u64::from(d.subsec_millis()));
    out
}

/// Days since 1970-01-01 as (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn slow(t: SystemTime) -> [u8; 24] {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let text = time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default();
    // Years before 1970 (a clock set wrong) still have four digits; anything else is the epoch.
    text.as_bytes()
        .try_into()
        .unwrap_or(*b"1970-01-01T00:00:00.000Z")
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

    #[test]
    fn the_fast_form_is_the_time_crates_form() {
        // Leap days, century years, the ends of months and years, and a spread of others.
        let mut seconds: Vec<u64> = vec![
            0,
            59,
            86_399,
            951_782_400,   // 2000-02-29
            951_868_799,   // 2000-02-29T23:59:59
            4_107_542_400, // 2100-03-01
            1_709_164_800, // 2024-02-29
            1_735_689_599, // 2024-12-31T23:59:59
            MAX_FAST_SECONDS - 1,
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seconds.push(x % MAX_FAST_SECONDS);
        }
        for (i, s) in seconds.into_iter().enumerate() {
            let t = UNIX_EPOCH + Duration::new(s, (i as u32 % 1000) * 1_000_123);
            assert_eq!(timestamp_bytes(t), slow(t), "{s}");
        }
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(timestamp(before), "1969-12-31T23:59:59.000Z");
    }
}
