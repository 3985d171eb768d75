"""lightcl.bench: datasets and task streams, baselines, metrics, memory meters, reports and plots."""
