"""A run's report: one static HTML page with curves, cluster grids and what the filters see."""
