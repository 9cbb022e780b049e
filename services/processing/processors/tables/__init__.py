"""Table processors: profiles, anomalies and normalization of a dataset's columns."""
