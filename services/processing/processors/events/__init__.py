"""Event counts: rows with a timestamp (optionally a group and a map position) counted per
period, watched for anomalies and trends, and explained by calendar models."""

from services.processing.processors.base import Processor
from services.processing.processors.events import count_anomalies, count_comparison, count_model

PROCESSORS: list[Processor] = [
    Processor(
        name="count_anomalies",
        description="Count events per period (and group, H3 cell); flag recent periods above"
        " a Poisson or negative-binomial baseline and test recent trends; writes the series,"
        " the tests and plots.",
        params_model=count_anomalies.CountAnomaliesParams,
        artifacts=count_anomalies.ARTIFACTS,
        run=count_anomalies.run,
        check_columns=count_anomalies.check_columns,
    ),
    Processor(
        name="count_model",
        description="Model event counts per hour, day or week (and group) on calendar features"
        " with a negative binomial (NB2) or Poisson regression: coefficients, incidence-rate"
        " ratios, fit statistics, fitted values with 95% prediction intervals.",
        params_model=count_model.CountModelParams,
        artifacts=[count_model.COEFFICIENTS, count_model.FITTED],
        run=count_model.run,
        check_columns=count_model.check_columns,
        # statsmodels' Poisson GLM iterates without a callback: a cancel kills the child.
        isolated=True,
    ),
    Processor(
        name="count_comparison",
        description="Events in the latest complete month (or year) against the same period of"
        " earlier years, with the change and percent change, per group.",
        params_model=count_comparison.CountComparisonParams,
        artifacts=[count_comparison.ARTIFACT],
        run=count_comparison.run,
        check_columns=count_comparison.check_columns,
    ),
]
