"""lightcl.bench: baselines, metrics, memory meters, suites, reports and plots (datasets and task streams
are the data layer, ``lightcl.data``)."""
