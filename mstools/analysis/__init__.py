"""Analysis: probes, directions, projections and readouts."""
