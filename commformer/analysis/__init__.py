"""Analysis tools: checkpoint re-evaluation, run reports with intervals, plots and throughput benchmarks."""
