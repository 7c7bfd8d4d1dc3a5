"""Reports from run directories: GLUE tables and plots."""
