"""On-demand benchmarks; each writes JSON results under benchmarks/results/."""
