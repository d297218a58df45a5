//! [`YearMonth`]: a calendar month, the value of a month parameter.

use std::fmt;

use chrono::{Datelike as _, NaiveDate};

/// A calendar month (`YYYY-MM`), the value of a [`ParamKind::Month`] parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    year: i32,
    month: u32,
}

impl YearMonth {
    /// The month `month` (1..=12) of `year`; `None` when out of range.
    pub fn new(year: i32, month: u32) -> Option<Self> {
        // Both ends must exist as dates.
        NaiveDate::from_ymd_opt(year, month, 1)?;
        Some(YearMonth { year, month })
    }

    /// The month holding `date`.
    pub fn of(date: NaiveDate) -> Self {
        YearMonth {
            year: date.year(),
            month: date.month(),
        }
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1..=12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// Its first day.
    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("a valid month")
    }

    /// The month after.
    pub fn succ(self) -> Self {
        if self.month == 12 {
            YearMonth {
                year: self.year + 1,
                month: 1,
            }
        } else {
            YearMonth {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before.
    pub fn pred(self) -> Self {
        if self.month == 1 {
            YearMonth {
                year: self.year - 1,
                month: 12,
            }
        } else {
            YearMonth {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// Its last day.
    pub fn last_day(self) -> NaiveDate {
        self.succ().first_day().pred_opt().expect("a day before")
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}
