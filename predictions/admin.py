from predictions import drift_admin  # noqa: F401  (issue 5: registers DriftReport)
