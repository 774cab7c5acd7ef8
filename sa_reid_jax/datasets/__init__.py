"""Re-id datasets in Market-1501 layout."""
