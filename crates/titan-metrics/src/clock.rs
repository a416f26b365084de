//! Wall-clock helpers: Unix time, torchtitan's `%Y%m%d-%H%M` run-folder stamp, host name.
//!
//! The stamp is in UTC: torchtitan uses local time, which needs the time-zone database; on the
//! servers Titan runs on local time is usually UTC anyway.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, with sub-second precision.
pub fn unix_time_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `YYYYmmdd-HHMM` for a Unix time in seconds (UTC), the folder torchtitan makes per run.
pub fn folder_stamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}",
        secs_of_day / 3600,
        (secs_of_day % 3600) / 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (proleptic, valid for any i64 day count
/// that fits a year in i64). Works in 400-year eras of 146,097 days, where the calendar repeats.
fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so the leap day falls at the end of the year.
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// This machine's host name (Python's `socket.gethostname()`), made safe for a file name.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "localhost".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_stamp_of_known_instants() {
        assert_eq!(folder_stamp(0), "19700101-0000");
        // 2000-02-29 23:59:59 UTC (leap day of a year divisible by 400).
        assert_eq!(folder_stamp(951_868_799), "20000229-2359");
        // 2024-12-31 12:34:56 UTC.
        assert_eq!(folder_stamp(1_735_648_496), "20241231-1234");
        // 2100-03-01 00:00:00 UTC (2100 is not a leap year).
        assert_eq!(folder_stamp(4_107_542_400), "21000301-0000");
    }

    #[test]
    fn hostname_is_file_name_safe() {
        let name = hostname();
        assert!(!name.is_empty());
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    }
}
