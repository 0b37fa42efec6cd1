"""One date format on every page (admin lists, detail pages, our templates): ISO 8601 with the
UTC offset, e.g. 2026-12-01T02:30:00+0000, instead of the English locale's "Dec. 1, 2026, 2:30
a.m." next to our own "2026-12-01 02:30". Input formats stay Django's."""

DATETIME_FORMAT = r"Y-m-d\TH:i:sO"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = DATE_FORMAT
TIME_FORMAT = "H:i:s"
MONTH_DAY_FORMAT = "m-d"
YEAR_MONTH_FORMAT = "Y-m"
