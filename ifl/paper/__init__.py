"""Facts copied from the paper (its tables as CSV), shown beside this run's numbers."""
