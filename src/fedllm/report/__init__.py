"""Progress, resource readings, plots."""
