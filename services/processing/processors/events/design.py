"""count_model's design matrix: calendar features of each period, one column per level.

Rows are (series, period) pairs, series laid end to end (periods.Dense). Columns: `const`,
then per feature in the order asked:

- day_of_week: indicators `day_of_week[Tue]` ... `[Sun]` of the levels present but the first
  (the reference: Monday when present);
- is_weekend: 1 on Saturday and Sunday (the period's start);
- month: indicators `month[Feb]` ... `[Dec]`, the first month present the reference (a week
  is in the month of its Monday);
- hour: indicators `hour[1]` ... `hour[23]`, the first hour present the reference;
- trend: periods since the dataset's first period (0, 1, 2...): its coefficient is the change
  of the log rate per period;

then, with a group column, `<group>[<value>]` for each group but the first (nulls last). A
column constant over the rows (is_weekend without a weekend, the trend of one period) cannot
be estimated apart from `const`: it is left out and named in the summary.

Imported only by a running step (numpy).
"""

from dataclasses import dataclass

import numpy as np

from services.processing.processors.events.common import PeriodUnit

DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True)
class Design:
    matrix: np.ndarray  # rows x columns, float64
    names: list[str]
    left_out: list[str]  # constant columns dropped


def calendar(unit: PeriodUnit, periods: np.ndarray) -> dict[str, np.ndarray]:
    """Weekday (Monday 0), month (1-12) and hour of each period's start."""
    periods = periods.astype(np.int64)
    if unit == "hour":
        days, hours = np.divmod(periods, 24)
    elif unit == "week":
        days, hours = 4 + 7 * periods, np.zeros_like(periods)  # day 4: Monday 1970-01-05
    else:
        days, hours = periods, np.zeros_like(periods)
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    return {"weekday": (days + EPOCH_WEEKDAY) % 7, "month": months, "hour": hours}


def build(
    unit: PeriodUnit,
    features: list[str],
    periods: np.ndarray,
    first_period: int,
    series: np.ndarray,
    group_name: str | None,
    group_labels: list[str],
) -> Design:
    """The design matrix of rows (series[i], periods[i]); group_labels name the series."""
    parts = calendar(unit, periods)
    columns: list[np.ndarray] = [np.ones(len(periods))]
    names = ["const"]

    def indicators(feature: str, values: np.ndarray, labels: list[str], offset: int) -> None:
        present = np.unique(values)
        for level in present[1:]:  # the first level present is the reference
            columns.append((values == level).astype(np.float64))
            names.append(f"{feature}[{labels[int(level) - offset]}]")

    for feature in features:
        if feature == "day_of_week":
            indicators(feature, parts["weekday"], DAYS, 0)
        elif feature == "is_weekend":
            columns.append((parts["weekday"] >= 5).astype(np.float64))
            names.append(feature)
        elif feature == "month":
            indicators(feature, parts["month"], MONTHS, 1)
        elif feature == "hour":
            indicators(feature, parts["hour"], [str(h) for h in range(24)], 0)
        elif feature == "trend":
            columns.append((periods - first_period).astype(np.float64))
            names.append(feature)
    if group_name is not None:
        indicators(group_name, series, group_labels, 0)
    left_out = [
        name
        for name, column in zip(names[1:], columns[1:], strict=True)
        if len(column) and np.all(column == column[0])
    ]
    kept = [i for i, name in enumerate(names) if name not in left_out]
    matrix = np.column_stack([columns[i] for i in kept]) if len(periods) else np.zeros((0, 1))
    return Design(matrix, [names[i] for i in kept], left_out)
