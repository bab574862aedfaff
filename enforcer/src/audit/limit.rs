//! The kernel's rate limit of decision records (`--rate-limit`): at most
//! `burst` records per window for one container, file and decision; the
//! decisions themselves are always carried out. What is left out is counted
//! (`kernel.events_suppressed`), carried into the key's next record
//! (`enforcer.suppressed`) and reported in the periodic accounting record.

use std::{fmt, str::FromStr, time::Duration};

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RateLimit {
    /// Records per window; 0 is no limit.
    pub burst: u32,
    pub window: Duration,
}

impl RateLimit {
    pub const DEFAULT: Self = Self {
        burst: 10,
        window: Duration::from_secs(10),
    };
    pub const OFF: Self = Self {
        burst: 0,
        window: Duration::ZERO,
    };

    /// The window in the kernel's nanoseconds.
    pub fn window_ns(self) -> u64 {
        u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self::OFF);
        }
        let (burst, window) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not BURST/WINDOW (e.g. 10/10s) or `off`"))?;
        let burst: u32 = burst
            .parse()
            .map_err(|_| format!("`{burst}` in `{text}` is not a number of records"))?;
        let window = humantime_serde::re::humantime::parse_duration(window)
            .map_err(|error| format!("`{window}` in `{text}` is not a duration: {error}"))?;
        if burst == 0 {
            return Ok(Self::OFF);
        }
        if window < Duration::from_millis(1) {
            return Err(format!("the window of `{text}` is shorter than 1ms"));
        }
        Ok(Self { burst, window })
    }
}

impl TryFrom<String> for RateLimit {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.burst == 0 {
            f.write_str("off")
        } else {
            write!(
                f,
                "{}/{}",
                self.burst,
                humantime_serde::re::humantime::format_duration(self.window)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_burst_and_window() {
        assert_eq!("10/10s".parse(), Ok(RateLimit::DEFAULT));
        assert_eq!(
            "3/500ms".parse(),
            Ok(RateLimit {
                burst: 3,
                window: Duration::from_millis(500)
            })
        );
        assert_eq!("off".parse(), Ok(RateLimit::OFF));
        assert_eq!("0/1s".parse(), Ok(RateLimit::OFF));
        assert_eq!(RateLimit::DEFAULT.to_string(), "10/10s");
        for bad in ["10", "x/1s", "5/soon", "5/0s", "-1/1s"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}
