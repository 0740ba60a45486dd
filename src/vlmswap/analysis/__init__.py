"""Analysis: paper-style tables with sample-weighted averages, and benchmark correlation matrices."""
