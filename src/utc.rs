//! Calendar date and time in UTC from milliseconds since the Unix epoch, without a
//! time-zone database: SNMP's `DateAndTime`, the CLI's timestamps and the link plan's
//! minutes all read it from here.

use std::fmt;

/// A moment in UTC, broken into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
}

impl UtcTime {
    /// The calendar fields of `unix_ms` (H. Hinnant's civil-from-days algorithm).
    pub fn from_unix_ms(unix_ms: u64) -> UtcTime {
        let secs = unix_ms / 1000;
        let days = (secs / 86_400) as i64;
        let of_day = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        UtcTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (of_day / 3600) as u8,
            minute: (of_day % 3600 / 60) as u8,
            second: (of_day % 60) as u8,
            millis: (unix_ms % 1000) as u16,
        }
    }

    /// `2026-12-06 21:43 UTC`: to the minute, for people.
    pub fn to_minute(&self) -> String {
        format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute
        )
    }
}

impl UtcTime {
    /// RFC 3339 to the millisecond: `2026-12-06T21:43:38.250Z`.
    pub fn to_rfc3339_millis(&self) -> String {
        format!(
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

/// RFC 3339 to the second: `2026-12-06T21:43:38Z`.
impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_fields_across_epochs_leap_days_and_centuries() {
        let t = UtcTime::from_unix_ms(0);
        assert_eq!((t.year, t.month, t.day, t.hour), (1970, 1, 1, 0));
        // 2000-02-29T23:59:59.999Z: a leap day of a century divisible by 400.
        let t = UtcTime::from_unix_ms(951_868_799_999);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis),
            (2000, 2, 29, 23, 59, 59, 999)
        );
        // 2100-03-01: 2100 is not a leap year.
        let t = UtcTime::from_unix_ms(4_107_542_400_000);
        assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
        assert_eq!(
            UtcTime::from_unix_ms(1_796_593_418_000).to_string(),
            "2026-12-06T21:43:38Z"
        );
        assert_eq!(
            UtcTime::from_unix_ms(1_796_593_418_000).to_minute(),
            "2026-12-06 21:43 UTC"
        );
        assert_eq!(
            UtcTime::from_unix_ms(1_796_593_418_005).to_rfc3339_millis(),
            "2026-12-06T21:43:38.005Z"
        );
    }
}
